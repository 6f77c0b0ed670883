from __future__ import annotations

import ipaddress

from node_plugin.bridge import masq_names as names


def test_chain_names_match_the_reference_test_vectors() -> None:
    # containernetworking/plugins pkg/utils/utils_test.go
    assert names.iptables_chain("test", "1234") == "CNI-2bbe0c48b91a7d1b8a6753a8"
    assert (
        names.iptables_chain("testalongnamethatdoesnotmakesense", "1234")
        == "CNI-374f33fe84ab0ed84dcdebe3"
    )
    assert names.iptables_comment("net", "abc") == 'name: "net" id: "abc"'


def test_restore_script_is_one_transaction_without_duplicate_jumps() -> None:
    addrs = [ipaddress.ip_interface("10.1.0.5/24")]
    script = names.iptables_restore_script("net", "cid", addrs, "")
    chain = names.iptables_chain("net", "cid")
    assert script.splitlines() == [
        "*nat",
        f":{chain} - [0:0]",
        f'-A {chain} -d 10.1.0.0/24 -m comment --comment "name: \\"net\\" id: \\"cid\\"" -j ACCEPT',
        f'-A {chain} ! -d 224.0.0.0/4 -m comment --comment "name: \\"net\\" id: \\"cid\\"" '
        "-j MASQUERADE",
        f'-A POSTROUTING -s 10.1.0.5/32 -m comment --comment "name: \\"net\\" id: \\"cid\\"" '
        f"-j {chain}",
        "COMMIT",
    ]
    again = names.iptables_restore_script("net", "cid", addrs, script)
    assert "-A POSTROUTING" not in again


LISTING = """-P POSTROUTING ACCEPT
-N {c}
-N CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.1.0.5/32 -m comment --comment "name: \\"net\\" id: \\"cid\\"" -j {c}
-A {c} -d 10.1.0.0/24 -m comment --comment "name: \\"net\\" id: \\"cid\\"" -j ACCEPT
-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \\"net\\" id: \\"cid\\"" -j RETURN"""


def test_teardown_and_gc_only_touch_this_networks_chains() -> None:
    chain = names.iptables_chain("net", "cid")
    listing = LISTING.format(c=chain)
    script = names.iptables_teardown_script(chain, listing)
    assert script is not None
    assert script.splitlines()[1].startswith("-D POSTROUTING -s 10.1.0.5/32")
    assert script.splitlines()[-3:] == [f"-F {chain}", f"-X {chain}", "COMMIT"]
    assert names.iptables_teardown_script("CNI-0000", listing) is None
    assert names.iptables_chains_for_network("net", listing) == {chain: "cid"}
    assert names.iptables_chains_for_network("other", listing) == {}


def test_nft_names() -> None:
    comment = names.nft_comment("net", "eth0", "cid")
    assert comment.startswith(names.nft_instance_hash("net", "eth0", "cid") + ", net: net")
    assert names.nft_instance_hash("net", "eth0", "cid").startswith(names.nft_network_hash("net"))
    assert len(names.nft_comment("n" * 200, "eth0", "cid")) == 128
    script = names.nft_setup_script(
        "net", "eth0", "cid", [ipaddress.ip_interface("fd00::5/64")], [7]
    )
    assert "delete rule inet cni_plugins_masquerade masq_checks handle 7" in script
    assert "ip6 saddr == fd00::5 ip6 daddr != fd00::/64 masquerade" in script


def test_nft_rule_lookup_by_comment_prefix() -> None:
    listing = {
        "nftables": [
            {"metainfo": {}},
            {"rule": {"chain": "masq_checks", "handle": 4, "comment": "aaaa-bbbb, net: x"}},
            {"rule": {"chain": "masq_checks", "handle": 5, "comment": "cccc-dddd, net: y"}},
            {"rule": {"chain": "postrouting", "handle": 6, "comment": "aaaa"}},
        ]
    }
    assert names.nft_rules_with_prefix(listing, "aaaa") == [(4, "aaaa-bbbb, net: x")]
    assert names.nft_rules_with_prefix(None, "aaaa") == []
