"""ipMasq names and rule text, as the reference writes them: either plugin cleans up the other's.

Pure. iptables: chain `CNI-` + sha512(network + containerID)[:24], every rule with
the comment `name: "<network>" id: "<containerID>"`. nftables: table
`inet cni_plugins_masquerade`, one rule per address in chain `masq_checks`, its
comment starting with sha512(network)[:16] + "-" + sha512(ifname:containerID)[:16].
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Sequence

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

CHAIN_PREFIX = "CNI-"
MAX_CHAIN_LENGTH = 28
NFT_TABLE = "cni_plugins_masquerade"
NFT_CHAIN = "masq_checks"
NFT_COMMENT_MAX = 128
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def hash_with_prefix(length: int, prefix: str, to_hash: str) -> str:
    return (prefix + hashlib.sha512(to_hash.encode()).hexdigest())[:length]


def iptables_chain(network: str, container_id: str) -> str:
    return hash_with_prefix(MAX_CHAIN_LENGTH, CHAIN_PREFIX, network + container_id)


def iptables_comment(network: str, container_id: str) -> str:
    return f"name: {_go_quote(network)} id: {_go_quote(container_id)}"


def _go_quote(s: str) -> str:
    """Go's %q for the printable ASCII names CNI allows (JSON escaping matches there)."""
    return json.dumps(s)


def _restore_quote(s: str) -> str:
    """Quote for iptables-restore, which reads `\\"` inside double quotes."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def iptables_restore_script(
    network: str, container_id: str, addresses: Sequence[IPInterface], existing_rules: str
) -> str:
    """One `iptables-restore --noflush` transaction for one family's addresses.

    Declaring the chain (re)creates it empty; POSTROUTING jumps already present in
    `existing_rules` (`iptables -t nat -S POSTROUTING` output) are not added twice.
    """
    chain = iptables_chain(network, container_id)
    comment = _restore_quote(iptables_comment(network, container_id))
    lines = ["*nat", f":{chain} - [0:0]"]
    jumps = []
    for a in addresses:
        lines.append(f"-A {chain} -d {a.network} -m comment --comment {comment} -j ACCEPT")
    if addresses:
        mcast = MULTICAST[addresses[0].version]
        lines.append(f"-A {chain} ! -d {mcast} -m comment --comment {comment} -j MASQUERADE")
    for a in addresses:
        host = f"{a.ip}/{a.max_prefixlen}"
        jump = f"-A POSTROUTING -s {host} -m comment --comment {comment} -j {chain}"
        if jump not in existing_rules:
            jumps.append(jump)
    lines.extend(jumps)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def iptables_teardown_script(chain: str, listing: str) -> str | None:
    """Delete every jump to `chain`, then the chain; None when neither exists.

    `listing` is `iptables -t nat -S` output; its rule lines are valid restore input.
    """
    lines = listing.splitlines()
    has_chain = f"-N {chain}" in lines
    deletes = [
        "-D" + ln[2:]
        for ln in lines
        if ln.startswith("-A ") and not ln.startswith(f"-A {chain} ") and _jumps_to(ln, chain)
    ]
    if not has_chain and not deletes:
        return None
    out = ["*nat", *deletes]
    if has_chain:
        out += [f"-F {chain}", f"-X {chain}"]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def _jumps_to(rule: str, chain: str) -> bool:
    return rule.endswith(f" -j {chain}") or f" -j {chain} " in rule


def iptables_chains_for_network(network: str, listing: str) -> dict[str, str]:
    """{chain: containerID} for the chains this network's masquerading created.

    Only chains whose name is exactly the reference hash of (network, id) count, so
    other plugins' CNI-* chains (portmap's) are never touched.
    """
    out: dict[str, str] = {}
    quoted_empty = _restore_quote(iptables_comment(network, ""))  # ..."id: \"\""
    prefix = "--comment " + quoted_empty[: -len('\\""')]
    for ln in listing.splitlines():
        if not ln.startswith(f"-A {CHAIN_PREFIX}") or prefix not in ln:
            continue
        chain = ln.split()[1]
        cid = ln.split(prefix, 1)[1].split('\\"', 1)[0]
        if iptables_chain(network, cid) == chain:
            out[chain] = cid
    return out


def nft_network_hash(network: str) -> str:
    return hash_with_prefix(16, "", network)


def nft_instance_hash(network: str, ifname: str, container_id: str) -> str:
    return nft_network_hash(network) + "-" + hash_with_prefix(16, "", f"{ifname}:{container_id}")


def nft_comment(network: str, ifname: str, container_id: str) -> str:
    comment = "{}, net: {}, if: {}, id: {}".format(
        nft_instance_hash(network, ifname, container_id),
        network.replace('"', ""),
        ifname.replace('"', ""),
        container_id.replace('"', ""),
    )
    return comment[:NFT_COMMENT_MAX]


def nft_setup_script(
    network: str,
    ifname: str,
    container_id: str,
    addresses: Iterable[IPInterface],
    stale_handles: Iterable[int],
) -> str:
    t = f"inet {NFT_TABLE}"
    comment = nft_comment(network, ifname, container_id)
    lines = [
        f'add table {t} {{ comment "Masquerading for plugins from '
        f'github.com/containernetworking/plugins" ; }}',
        f'add chain {t} {NFT_CHAIN} {{ comment "Masquerade traffic from certain IPs to any '
        f'(non-multicast) IP outside their subnet" ; }}',
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat ; }}",
        f"flush chain {t} postrouting",
        f"add rule {t} postrouting ip daddr == 224.0.0.0/4 return",
        f"add rule {t} postrouting ip6 daddr == ff00::/8 return",
        f"add rule {t} postrouting goto {NFT_CHAIN}",
    ]
    lines += [f"delete rule {t} {NFT_CHAIN} handle {h}" for h in stale_handles]
    for a in addresses:
        fam = "ip" if a.version == 4 else "ip6"
        lines.append(
            f"add rule {t} {NFT_CHAIN} {fam} saddr == {a.ip} {fam} daddr != {a.network} "
            f'masquerade comment "{comment}"'
        )
    return "\n".join(lines) + "\n"


def nft_rules_with_prefix(listing: object, prefix: str) -> list[tuple[int, str]]:
    """(handle, comment) of `masq_checks` rules whose comment starts with `prefix`.

    `listing` is `nft -j list chain inet cni_plugins_masquerade masq_checks` parsed.
    """
    out: list[tuple[int, str]] = []
    if not isinstance(listing, dict):
        return out
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or rule.get("chain") != NFT_CHAIN:
            continue
        comment = rule.get("comment", "")
        if isinstance(comment, str) and comment.startswith(prefix):
            out.append((int(rule["handle"]), comment))
    return out
