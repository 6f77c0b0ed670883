"""cniwarden-bridge exec'd as a runtime would, in real network namespaces."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.plugin.conftest import (
    CniRun,
    PausedPlugins,
    RunCni,
    kill_once_paused,
    skip_for_shims,
    spawn_add,
)
from tests.integration.plugin.kernel import (
    Netns,
    attachment_state,
    host_veth_of,
    iptables_nat,
    nft_ruleset,
    run,
    unique,
    veths,
    wait_until,
)

pytestmark = pytest.mark.root
BR = "cniwarden-bridge"
HL = "cniwarden-host-local"
Sandbox = Callable[[], Netns]


def bconf(
    data_dir: Path,
    *,
    version: str = "1.1.0",
    ipam: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    if ipam is None:
        ipam = {"type": HL, "subnet": "10.66.0.0/24", "dataDir": str(data_dir)}
    c: dict[str, Any] = {
        "cniVersion": version,
        "name": unique("br"),
        "type": BR,
        "bridge": unique("cwb"),
        "ipam": ipam,
    }
    c.update(fields)
    return c


def dual_ipam(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "type": HL,
        "dataDir": str(data_dir),
        "ranges": [[{"subnet": "10.66.1.0/24"}], [{"subnet": "fd00:66::/64"}]],
        **extra,
    }


def leases(data_dir: Path, network: str) -> dict[str, str]:
    d = data_dir / network
    if not d.is_dir():
        return {}
    return {
        p.name: p.read_bytes().decode() for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name
    }


def add(run_cni: RunCni, c: dict[str, Any], sb: Netns | str, cid: str = "c1", **kw: Any) -> CniRun:
    return run_cni(BR, "ADD", c, container_id=cid, netns=sb, **kw)


def delete(
    run_cni: RunCni, c: dict[str, Any], sb: Netns | str, cid: str = "c1", **kw: Any
) -> CniRun:
    return run_cni(BR, "DEL", c, container_id=cid, netns=sb, **kw)


def test_add_check_del_dual_stack(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, ipam=dual_ipam(tmp_path), isDefaultGateway=True, mtu=1400, hairpinMode=True)
    sb = sandbox()
    out = add(run_cni, c, sb).expect_ok()
    assert [i["name"] for i in out["interfaces"]][0::2] == [c["bridge"], "eth0"]
    assert out["interfaces"][2]["sandbox"] == sb.path
    assert out["interfaces"][1]["name"].startswith("veth") and out["interfaces"][1]["mtu"] == 1400
    assert out["ips"] == [
        {"interface": 2, "address": "10.66.1.2/24", "gateway": "10.66.1.1"},
        {"interface": 2, "address": "fd00:66::2/64", "gateway": "fd00:66::1"},
    ]
    assert out["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "10.66.1.1"},
        {"dst": "::/0", "gw": "fd00:66::1"},
    ]
    state = attachment_state(cni_host, sb, "eth0", c["bridge"])
    assert state["container"] == {
        "kind": "veth",
        "mtu": 1400,
        "up": True,
        "addresses": ["10.66.1.2/24", "fd00:66::2/64"],
        "accept_dad": "0",
    }
    assert ("default", "10.66.1.1", "eth0", "boot", "", "") in state["routes4"]
    assert any(r[0] == "default" and r[1] == "fd00:66::1" for r in state["routes6"])
    assert state["host_veth"] == {
        "master": c["bridge"],
        "mtu": 1400,
        "up": True,
        "operstate": "UP",
        "hairpin": True,
        "isolated": False,
    }
    assert state["bridge"]["addresses"] == ["10.66.1.1/24", "fd00:66::1/64"]
    assert state["bridge"]["up"] and not state["bridge"]["promisc"]
    assert out["interfaces"][0]["mac"] == cni_host.must_link(c["bridge"])["address"]
    assert out["interfaces"][2]["mac"] == sb.must_link("eth0")["address"]
    assert cni_host.sysctl("net/ipv4/ip_forward") == "1"
    assert cni_host.sysctl("net/ipv6/conf/all/forwarding") == "1"
    assert sb.sysctl("net/ipv4/conf/eth0/arp_notify") == "1"

    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="c1", netns=sb).expect_ok()

    delete(run_cni, c, sb).expect_ok()
    assert sb.link("eth0") is None and veths(cni_host) == []
    assert leases(tmp_path, c["name"]) == {}
    assert cni_host.link(c["bridge"]) is not None  # the bridge stays
    delete(run_cni, c, sb).expect_ok()  # idempotent
    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="c1", netns=sb).expect_error(140)


def test_two_sandboxes_talk_over_the_bridge(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, isGateway=True)
    a, b = sandbox(), sandbox()
    ip_a = add(run_cni, c, a, "a").expect_ok()["ips"][0]["address"].split("/")[0]
    ip_b = add(run_cni, c, b, "b").expect_ok()["ips"][0]["address"].split("/")[0]
    a.exec("ping", "-c", "1", "-W", "2", ip_b)
    b.exec("ping", "-c", "1", "-W", "2", ip_a)
    a.exec("ping", "-c", "1", "-W", "2", "10.66.0.1")  # the gateway on the bridge


def test_l2_mode_and_disabled_container_interface(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, ipam={})
    sb = sandbox()
    out = add(run_cni, c, sb).expect_ok()
    assert "ips" not in out and "routes" not in out
    assert "UP" in sb.must_link("eth0")["flags"]
    # CHECK with no IPAM skips the IPAM step (the reference fails here).
    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="c1", netns=sb).expect_ok()
    run_cni(BR, "STATUS", c).expect_ok()
    delete(run_cni, c, sb).expect_ok()

    down = bconf(tmp_path, ipam={}, disableContainerInterface=True)
    sb2 = sandbox()
    add(run_cni, down, sb2).expect_ok()
    assert "UP" not in sb2.must_link("eth0")["flags"]
    bad = bconf(tmp_path, disableContainerInterface=True)
    assert "disableContainerInterface" in add(run_cni, bad, sandbox()).expect_error(7)


def _cached_mac(ns: Netns, address: str, dev: str) -> str | None:
    """The MAC `ns` has cached for `address` on `dev` (None when it has no entry)."""
    entries = [e for e in ns.ip("neigh", "show", "to", address, "dev", dev) if "dst" in e]
    return entries[0].get("lladdr") if entries else None


def _caches(
    ns: Netns, address: str, dev: str, mac: str, *, ping: bool = False
) -> Callable[[], bool]:
    """A check that `ns` maps `address` to `mac` (after pinging it, when `ping`)."""

    def check() -> bool:
        if ping:
            argv = ["ip", "netns", "exec", ns.name, "ping", "-c", "1", "-W", "1", address]
            subprocess.run(argv, capture_output=True, check=False, timeout=30)
        return _cached_mac(ns, address, dev) == mac

    return check


def test_a_reused_address_is_announced_to_neighbours_that_cached_the_old_mac(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    """ADD announces the pod's addresses once its bridge port forwards (gratuitous ARP,
    unsolicited neighbour advertisement): a pod and the node that cached the previous
    holder's MAC reach the new pod at once, instead of after their stale entry is probed
    and dropped (5 s and more, during which their frames go to the old MAC)."""
    ipam = {
        "type": HL,
        "dataDir": str(tmp_path),
        "ranges": [
            [{"subnet": "10.66.2.0/24", "rangeStart": "10.66.2.2", "rangeEnd": "10.66.2.3"}],
            [{"subnet": "fd00:67::/64", "rangeStart": "fd00:67::2", "rangeEnd": "fd00:67::3"}],
        ],
    }
    c = bconf(tmp_path, ipam=ipam, isGateway=True)
    neighbour, old, new = sandbox(), sandbox(), sandbox()
    add(run_cni, c, neighbour, "neighbour").expect_ok()
    assert [ip["address"] for ip in add(run_cni, c, old, "old").expect_ok()["ips"]] == [
        "10.66.2.3/24",
        "fd00:67::3/64",
    ]
    old_mac = old.must_link("eth0")["address"]
    reused = ("10.66.2.3", "fd00:67::3")
    watchers = ((neighbour, "eth0"), (cni_host, c["bridge"]))
    for ns, dev in watchers:
        for address in reused:
            # The bridge's own IPv6 address may still be tentative (DAD): retry until it talks.
            wait_until(
                _caches(ns, address, dev, old_mac, ping=True),
                f"{ns.name} to cache the old pod's MAC for {address}",
                timeout=60,
            )
    delete(run_cni, c, old, "old").expect_ok()

    out = add(run_cni, c, new, "new").expect_ok()
    assert [ip["address"].split("/")[0] for ip in out["ips"]] == list(reused)
    new_mac = new.must_link("eth0")["address"]
    assert new_mac != old_mac
    # Without any traffic to the new pod, every cache holds its MAC: nothing but an
    # announcement can change an entry nobody uses (the bound is for a loaded machine).
    for ns, dev in watchers:
        for address in reused:
            wait_until(
                _caches(ns, address, dev, new_mac),
                f"{ns.name} to learn the new pod's MAC for {address} from the announcement",
                timeout=10,
            )
    # ...so the first packet reaches it (to the old MAC it would be lost).
    for ns, _dev in watchers:
        for address in reused:
            ns.exec("ping", "-c", "1", "-W", "5", address)


def test_mac_priority_runtime_config_then_args_then_cni_args(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    env_mac, args_mac, rc_mac = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, env_mac),
        ({"args": {"cni": {"mac": args_mac}}}, args_mac),
        ({"args": {"cni": {"mac": args_mac}}, "runtimeConfig": {"mac": rc_mac}}, rc_mac),
    ]
    for n, (extra, want) in enumerate(cases):
        c = bconf(tmp_path, **extra)
        sb = sandbox()
        out = add(run_cni, c, sb, f"m{n}", cni_args=f"IgnoreUnknown=1;MAC={env_mac}").expect_ok()
        assert out["interfaces"][2]["mac"] == want
        assert sb.must_link("eth0")["address"] == want
    # MAC alone (no IgnoreUnknown): the in-process host-local must accept the bridge's key.
    c = bconf(tmp_path)
    sb = sandbox()
    out = add(run_cni, c, sb, "m9", cni_args=f"MAC={env_mac}").expect_ok()
    checked = dict(c, prevResult=out)
    run_cni(
        BR, "CHECK", checked, container_id="m9", netns=sb, cni_args=f"MAC={env_mac}"
    ).expect_ok()
    delete(run_cni, c, sb, "m9", cni_args=f"MAC={env_mac}").expect_ok()
    bad = bconf(tmp_path, runtimeConfig={"mac": "01:00:00:00:00:01"})
    assert "runtimeConfig.mac" in add(run_cni, bad, sandbox()).expect_error(7)
    assert "MAC" in add(run_cni, bconf(tmp_path), sandbox(), cni_args="MAC=zz").expect_error(4)


def test_promisc_isolation_and_hairpin_rules(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, promiscMode=True, portIsolation=True)
    sb = sandbox()
    out = add(run_cni, c, sb).expect_ok()
    state = attachment_state(cni_host, sb, "eth0", c["bridge"])
    assert state["bridge"]["promisc"] and state["host_veth"]["isolated"]
    assert state["host_veth"]["hairpin"] is False
    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="c1", netns=sb).expect_ok()
    # CHECK notices the bridge no longer in the configured mode
    run("ip", "-n", cni_host.name, "link", "set", c["bridge"], "promisc", "off")
    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="c1", netns=sb).expect_error(140)
    both = bconf(tmp_path, promiscMode=True, hairpinMode=True)
    msg = add(run_cni, both, sandbox()).expect_error(7)
    assert "hairpinMode" in msg and "promiscMode" in msg


def test_existing_interface_in_sandbox_is_an_error_and_nothing_leaks(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path)
    sb = sandbox()
    run("ip", "-n", sb.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    msg = add(run_cni, c, sb).expect_error(120)
    assert "eth0" in msg
    assert veths(cni_host) == [] and leases(tmp_path, c["name"]) == {}
    assert sb.link("eth0p") is not None  # untouched


def test_name_taken_by_a_non_bridge(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path)
    run(
        "ip",
        "-n",
        cni_host.name,
        "link",
        "add",
        c["bridge"],
        "type",
        "veth",
        "peer",
        "name",
        "other",
    )
    assert "not a bridge" in add(run_cni, c, sandbox()).expect_error(122)
    assert sorted(veths(cni_host)) == sorted([c["bridge"], "other"])
    assert leases(tmp_path, c["name"]) == {}


def test_failure_after_ipam_rolls_everything_back_and_force_address(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, isGateway=True, ipMasq=True)
    run("ip", "-n", cni_host.name, "link", "add", c["bridge"], "type", "bridge")
    run("ip", "-n", cni_host.name, "addr", "add", "192.168.99.1/24", "dev", c["bridge"])
    msg = add(run_cni, c, sandbox()).expect_error(122)
    assert (
        "192.168.99.1/24" in msg
        and "forceAddress"
        in run_cni(BR, "ADD", c, container_id="c1", netns=sandbox()).output["details"]
    )
    assert veths(cni_host) == [] and leases(tmp_path, c["name"]) == {}
    assert iptables_nat(cni_host) == []
    forced = dict(c, forceAddress=True)
    add(run_cni, forced, sandbox()).expect_ok()
    assert cni_host.addrs(c["bridge"]) == ["10.66.0.1/24"]


def test_exhausted_range_leaves_no_veth(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    ipam = {
        "type": HL,
        "dataDir": str(tmp_path),
        "subnet": "10.66.2.0/24",
        "rangeStart": "10.66.2.10",
        "rangeEnd": "10.66.2.10",
    }
    c = bconf(tmp_path, ipam=ipam)
    add(run_cni, c, sandbox(), "one").expect_ok()
    sb = sandbox()
    msg = add(run_cni, c, sb, "two").expect_error(110)
    assert c["name"] in msg and "10.66.2.10-10.66.2.10" in msg
    assert sb.link("eth0") is None and len(veths(cni_host)) == 1
    assert run_cni(BR, "STATUS", c).expect_error(50)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_ipmasq_rules_per_attachment_del_and_gc(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path, backend: str
) -> None:
    c = bconf(
        tmp_path, ipam=dual_ipam(tmp_path), isGateway=True, ipMasq=True, ipMasqBackend=backend
    )
    sbs = {cid: sandbox() for cid in ("keep", "drop", "gone")}
    for cid, sb in sbs.items():
        add(run_cni, c, sb, cid).expect_ok()

    def masq_ids() -> set[str]:
        if backend == "iptables":
            lines = iptables_nat(cni_host, 4) + iptables_nat(cni_host, 6)
            return {cid for cid in sbs for ln in lines if f'id: \\"{cid}\\"' in ln}
        rules = nft_ruleset(cni_host)
        return {cid for cid in sbs if f"id: {cid}" in rules}

    assert masq_ids() == {"keep", "drop", "gone"}
    if backend == "iptables":
        v4 = iptables_nat(cni_host, 4)
        assert any(ln.startswith("-A POSTROUTING -s 10.66.1.") for ln in v4)
        assert any("MASQUERADE" in ln for ln in iptables_nat(cni_host, 6))
    else:
        rules = nft_ruleset(cni_host)
        assert "table inet cni_plugins_masquerade" in rules and "masquerade" in rules
    delete(run_cni, c, sbs["drop"], "drop").expect_ok()
    assert masq_ids() == {"keep", "gone"}
    # "gone": the runtime lost track (no DEL). GC keeps only what is listed.
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    run_cni(BR, "GC", gc).expect_ok()
    assert masq_ids() == {"keep"}
    assert set(leases(tmp_path, c["name"]).values()) == {"keep\r\neth0"}


def test_del_succeeds_when_netns_interface_or_prevresult_are_gone(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, isGateway=True, ipMasq=True)
    sb1, sb2 = sandbox(), sandbox()
    add(run_cni, c, sb1, "n1").expect_ok()
    add(run_cni, c, sb2, "n2").expect_ok()
    run("ip", "netns", "del", sb1.name)  # the runtime already removed the sandbox
    delete(run_cni, c, sb1, "n1").expect_ok()
    run("ip", "-n", sb2.name, "link", "del", "eth0")  # the interface is gone
    delete(run_cni, c, sb2, "n2").expect_ok()
    delete(run_cni, c, "", "n2").expect_ok()  # no netns at all
    assert leases(tmp_path, c["name"]) == {} and iptables_nat(cni_host) == []
    wait_until(lambda: veths(cni_host) == [], "the deleted sandbox's veth to go")


def test_dns_passthrough_and_prev_result_chaining(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo0", "sandbox": "/x"}],
        "ips": [{"interface": 0, "address": "192.0.2.5/32"}],
        "dns": {"nameservers": ["192.0.2.53"]},
    }
    dns = {"nameservers": ["10.66.0.53"], "search": ["svc.local"], "options": ["ndots:2"]}
    c = bconf(tmp_path, version="1.0.0", dns=dns, prevResult=prev)
    out = add(run_cni, c, sandbox()).expect_ok()
    assert out["dns"] == dns
    assert out["interfaces"][0] == {"name": "lo0", "sandbox": "/x"}
    assert [i["name"] for i in out["interfaces"]][1] == c["bridge"]
    assert out["ips"][0] == {"interface": 0, "address": "192.0.2.5/32"}
    assert out["ips"][1]["interface"] == 3 and out["ips"][1]["address"] == "10.66.0.2/24"


@pytest.mark.parametrize("version", ["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_result_written_in_the_config_version(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path, version: str
) -> None:
    out = add(run_cni, bconf(tmp_path, version=version, isGateway=True), sandbox()).expect_ok()
    assert out["cniVersion"] == version
    if version == "0.2.0":
        assert out["ip4"] == {"ip": "10.66.0.2/24", "gateway": "10.66.0.1"}
        assert "interfaces" not in out
    elif version.startswith("0."):
        assert out["ips"][0]["version"] == "4"
    else:
        assert "version" not in out["ips"][0]


def test_default_route_is_not_installed_twice(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    ipam = {
        "type": HL,
        "dataDir": str(tmp_path),
        "subnet": "10.66.3.0/24",
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "172.16.0.0/12"}],
    }
    c = bconf(tmp_path, ipam=ipam, isDefaultGateway=True)
    sb = sandbox()
    out = add(run_cni, c, sb).expect_ok()
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.66.3.1"}, {"dst": "172.16.0.0/12"}]
    routes = {r["dst"]: r.get("gateway") for r in sb.routes("-4")}
    assert routes["default"] == "10.66.3.1" and routes["172.16.0.0/12"] == "10.66.3.1"


def test_macspoofchk_rules_follow_the_attachment(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path, macspoofchk=True)
    sb = sandbox()
    out = add(run_cni, c, sb, "spoof").expect_ok()
    rules = nft_ruleset(cni_host)
    assert "cni-br-iface-spoof-eth0" in rules
    assert f"ether saddr {out['interfaces'][2]['mac']} return" in rules
    assert f'iifname "{out["interfaces"][1]["name"]}"' in rules
    delete(run_cni, c, sb, "spoof").expect_ok()
    assert "cni-br-iface-spoof-eth0" not in nft_ruleset(cni_host)
    # A sandbox that vanished without DEL: GC drops the rules of its vanished veth.
    gone = sandbox()
    add_out = add(run_cni, c, gone, "lost").expect_ok()
    lost = add_out["interfaces"][1]["name"]
    run("ip", "netns", "del", gone.name)
    wait_until(lambda: cni_host.link(lost) is None, f"{lost} to go with its namespace")
    assert "cni-br-iface-lost-eth0" in nft_ruleset(cni_host)
    run_cni(BR, "GC", dict(c, **{"cni.dev/valid-attachments": []})).expect_ok()
    assert "cni-br-iface-lost-eth0" not in nft_ruleset(cni_host)


def test_enabledad(run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path) -> None:
    c = bconf(tmp_path, ipam=dual_ipam(tmp_path), enabledad=True)
    sb = sandbox()
    add(run_cni, c, sb).expect_ok()
    assert sb.sysctl("net/ipv6/conf/eth0/accept_dad") == "1"
    assert sb.sysctl("net/ipv6/conf/eth0/enhanced_dad") == "1"


def _kernel_has_vlan_filtering(host: Netns) -> bool:
    name = unique("vf")
    proc = subprocess.run(
        ["ip", "-n", host.name, "link", "add", name, "type", "bridge", "vlan_filtering", "1"],
        capture_output=True,
        check=False,
    )
    run("ip", "-n", host.name, "link", "del", name, check=False)
    return proc.returncode == 0


def test_vlan_access_and_trunk(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    if not _kernel_has_vlan_filtering(cni_host):
        c = bconf(tmp_path, vlan=100)
        msg = add(run_cni, c, sandbox()).expect_error(999)
        assert "VLAN filtering" in msg
        assert veths(cni_host) == [] and leases(tmp_path, c["name"]) == {}
        pytest.skip("kernel built without CONFIG_BRIDGE_VLAN_FILTERING (checked the error)")
    c = bconf(tmp_path, vlan=100, preserveDefaultVlan=False)
    sb = sandbox()
    add(run_cni, c, sb).expect_ok()
    hv = host_veth_of(cni_host, sb, "eth0")
    assert hv is not None
    vlans = json.loads(
        run("bridge", "-n", cni_host.name, "-j", "vlan", "show", "dev", hv["ifname"])
    )
    vids = {v["vlan"] for entry in vlans for v in entry["vlans"]}
    assert vids == {100}
    t = bconf(tmp_path, vlanTrunk=[{"minID": 200, "maxID": 202}, {"id": 300}])
    sb2 = sandbox()
    add(run_cni, t, sb2, "t").expect_ok()
    hv2 = host_veth_of(cni_host, sb2, "eth0")
    assert hv2 is not None
    vlans = json.loads(
        run("bridge", "-n", cni_host.name, "-j", "vlan", "show", "dev", hv2["ifname"])
    )
    vids = {v["vlan"] for entry in vlans for v in entry["vlans"]}
    assert {200, 201, 202, 300} <= vids


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"vlan": 5000}, "vlan"),
        ({"vlan": 10, "vlanTrunk": [{"id": 5}]}, "vlanTrunk"),
        ({"vlanTrunk": [{"minID": 5}]}, "vlanTrunk[0].maxID"),
        ({"vlanTrunk": [{"minID": 9, "maxID": 5}]}, "vlanTrunk[0].minID"),
        ({"vlanTrunk": [{"id": 0}]}, "vlanTrunk[0].id"),
        ({"mtu": "1500"}, "mtu"),
        ({"mtu": 20}, "mtu"),
        ({"isGateway": "true"}, "isGateway"),
        ({"bridge": "a-much-too-long-bridge-name"}, "bridge"),
        ({"bridge": "br/0"}, "bridge"),
        ({"ipMasqBackend": "ebtables"}, "ipMasqBackend"),
        ({"ipam": {"type": HL, "subnet": "10.66.0.0/31"}}, "ipam.subnet"),
        ({"dns": {"nameservers": "10.0.0.1"}}, "dns.nameservers"),
        ({"prevResult": {"ips": [{"address": "nope"}]}}, "prevResult.ips[0].address"),
    ],
)
def test_invalid_bridge_config_names_the_field(
    run_cni: RunCni,
    cni_host: Netns,
    sandbox: Sandbox,
    tmp_path: Path,
    fields: dict[str, Any],
    needle: str,
) -> None:
    c = bconf(tmp_path)
    c.update(fields)
    if "ipam" in fields:
        c["ipam"]["dataDir"] = str(tmp_path)
    msg = add(run_cni, c, sandbox()).expect_error(7)
    assert needle in msg
    assert veths(cni_host) == [] and cni_host.link(c["bridge"]) is None


def test_bad_netns_and_missing_prev_result(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(tmp_path)
    assert "/nonexistent" in add(run_cni, c, "/nonexistent/netns").expect_error(121)
    notns = tmp_path / "plain-file"
    notns.write_text("")
    assert "not a network namespace" in add(run_cni, c, str(notns)).expect_error(121)
    assert leases(tmp_path, c["name"]) == {}
    sb = sandbox()
    add(run_cni, c, sb).expect_ok()
    assert "prevResult" in run_cni(BR, "CHECK", c, container_id="c1", netns=sb).expect_error(7)


def test_parallel_adds_into_one_bridge(
    cni_host: Netns, sandbox: Sandbox, tmp_path: Path, run_cni: RunCni
) -> None:
    c = bconf(tmp_path, isGateway=True)
    sbs = [sandbox() for _ in range(16)]

    def one(i: int) -> CniRun:
        return run_cni(BR, "ADD", c, container_id=f"p{i}", netns=sbs[i], timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        runs = list(pool.map(one, range(16)))
    assert all(r.ok for r in runs), [r.stdout for r in runs if not r.ok]
    addrs = {r.output["ips"][0]["address"] for r in runs}
    assert len(addrs) == 16
    for sb in sbs:
        hv = host_veth_of(cni_host, sb, "eth0")
        assert hv is not None and hv["master"] == c["bridge"]
    assert cni_host.addrs(c["bridge"]) == ["10.66.0.1/24"]


def test_killed_add_then_gc_leaks_nothing(
    cni_bin_dir: Path,
    cni_host: Netns,
    sandbox: Sandbox,
    tmp_path: Path,
    run_cni: RunCni,
    paused_plugins: PausedPlugins,
) -> None:
    skip_for_shims(cni_bin_dir)
    c = bconf(tmp_path, isGateway=True, ipMasq=True)
    sb = sandbox()
    kill_once_paused(
        spawn_add(paused_plugins.bin_dir, cni_host, BR, c, "killed", sb), paused_plugins
    )
    assert list(leases(tmp_path, c["name"]).values()) == ["killed\r\neth0"]  # leaked so far
    keep = add(run_cni, c, sandbox(), "alive").expect_ok()
    run("ip", "netns", "del", sb.name)  # the runtime gives up on the sandbox
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "alive", "ifname": "eth0"}]})
    run_cni(BR, "GC", gc).expect_ok()
    assert leases(tmp_path, c["name"]) == {keep["ips"][0]["address"].split("/")[0]: "alive\r\neth0"}
    assert all('\\"killed\\"' not in ln for ln in iptables_nat(cni_host))


def test_adds_killed_at_random_points_leak_nothing_after_gc(
    cni_bin_dir: Path, cni_host: Netns, sandbox: Sandbox, tmp_path: Path, run_cni: RunCni
) -> None:
    skip_for_shims(cni_bin_dir)
    c = bconf(tmp_path, isGateway=True, ipMasq=True)
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    for i in range(12):
        sb = sandbox()
        proc = spawn_add(cni_bin_dir, cni_host, BR, c, f"k{i}", sb)
        try:
            time.sleep(rnd.uniform(0.05, 0.6))
        finally:
            proc.kill()
            proc.wait()
        run("ip", "netns", "del", sb.name)
    wait_until(lambda: veths(cni_host) == [], "the killed ADDs' veths to go with their sandboxes")
    gc = dict(c, **{"cni.dev/valid-attachments": []})
    run_cni(BR, "GC", gc).expect_ok()
    assert leases(tmp_path, c["name"]) == {}
    assert iptables_nat(cni_host) == [] and iptables_nat(cni_host, 6) == []
    assert veths(cni_host) == []
    leftovers = (
        [p.name for p in (tmp_path / c["name"]).iterdir()]
        if (tmp_path / c["name"]).is_dir()
        else []
    )
    assert not [n for n in leftovers if n.startswith(".cniwarden-")]


def test_gc_and_status_need_1_1_0(run_cni: RunCni, cni_host: Netns, tmp_path: Path) -> None:
    c = bconf(tmp_path, version="1.0.0")
    run_cni(BR, "GC", c).expect_error(1)
    run_cni(BR, "STATUS", c).expect_error(1)
    run_cni(BR, "STATUS", bconf(tmp_path)).expect_ok()
