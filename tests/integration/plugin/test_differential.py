"""Differential tests: Debian's reference plugins (/usr/lib/cni/bridge, host-local) against ours.

The same config, with only `type` swapped, is run against the same kind of
sandboxes, each implementation in its own "node" namespace; the normalized results
and kernel state must be equal. Then one store directory (and one bridge) is shared
by both implementations across ADD/DEL, in both directions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.plugin.conftest import CniRun, RunCni
from tests.integration.plugin.kernel import Netns, attachment_state, iptables_nat, unique

pytestmark = pytest.mark.root
Sandbox = Callable[[], Netns]
OURS = {"bridge": "cniwarden-bridge", "host-local": "cniwarden-host-local"}
REF_VERSION = "1.0.0"  # Debian's reference 1.1.1 speaks up to CNI 1.0.0

SINGLE = {"subnet": "10.55.0.0/24"}
DUAL = {"ranges": [[{"subnet": "10.55.1.0/24"}], [{"subnet": "fd00:55::/64"}]]}
ROUTES = {
    "subnet": "10.55.2.0/24",
    "routes": [{"dst": "192.168.0.0/16"}, {"dst": "172.16.0.0/12", "gw": "10.55.2.254"}],
}

REQUESTED_MAC_PREFIX = "02:55:00:00:00:"

# name -> (bridge fields, ipam fields or None for L2, CNI_ARGS)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any] | None, str]] = {
    "gateway": ({"isGateway": True}, SINGLE, ""),
    "default-gateway-dual-stack": ({"isDefaultGateway": True}, DUAL, ""),
    "hairpin-mtu": ({"isGateway": True, "hairpinMode": True, "mtu": 1400}, SINGLE, ""),
    "promisc": ({"isGateway": True, "promiscMode": True}, SINGLE, ""),
    "ipmasq-dual-stack": ({"isGateway": True, "ipMasq": True}, DUAL, ""),
    "ipam-routes": ({"isGateway": True}, ROUTES, ""),
    "no-gateway": ({}, SINGLE, ""),
    "l2-only": ({}, None, ""),
    "requested-ip-and-mac": (
        {"isGateway": True},
        SINGLE,
        f"IgnoreUnknown=1;IP=10.55.0.77;MAC={REQUESTED_MAC_PREFIX}77",
    ),
}

# Where the reference's CHECK fails (always, or depending on random MACs) and ours must
# pass: bugs we do not copy.
REFERENCE_CHECK_BUGS = {
    "l2-only": "runs the IPAM CHECK without IPAM; compares the unpinned bridge MAC",
    "no-gateway": "compares the bridge MAC, which follows the ports when not a gateway",
    "ipam-routes": "a route without gw is installed via the gateway, then not found",
}


def config(
    kind: str,
    network: str,
    bridge: str,
    fields: dict[str, Any],
    ipam: dict[str, Any] | None,
    data_dir: Path,
    version: str = REF_VERSION,
) -> dict[str, Any]:
    """`kind` is "ref" or "ours": only the `type`s differ."""
    c: dict[str, Any] = {"cniVersion": version, "name": network, "bridge": bridge, **fields}
    c["type"] = "bridge" if kind == "ref" else OURS["bridge"]
    if ipam is None:
        c["ipam"] = {}
    else:
        c["ipam"] = {**copy.deepcopy(ipam), "dataDir": str(data_dir)}
        c["ipam"]["type"] = "host-local" if kind == "ref" else OURS["host-local"]
    return c


def normalize_result(out: dict[str, Any], sandboxes: dict[str, str]) -> dict[str, Any]:
    """Random veth names, kernel-chosen MACs and sandbox paths replaced by placeholders."""
    out = copy.deepcopy(out)
    for i, iface in enumerate(out.get("interfaces", [])):
        if iface["name"].startswith("veth"):
            iface["name"] = "<host-veth>"
        # Only the MAC a scenario requests is kept; a kernel-chosen one can start 02:55 too.
        if "mac" in iface and not iface["mac"].startswith(REQUESTED_MAC_PREFIX):
            iface["mac"] = f"<mac-{i}>"
        if "sandbox" in iface:
            iface["sandbox"] = sandboxes.get(iface["sandbox"], "<unknown>")
    return out


def comparable_state(host: Netns, sb: Netns, bridge: str) -> dict[str, Any]:
    state = attachment_state(host, sb, "eth0", bridge)
    if state["container"] is not None:
        # IPv6 DAD: we follow the current reference (off unless `enabledad`); Debian's
        # 1.1.1 turns it off only with hairpin/promisc. Not part of the comparison.
        state["container"].pop("accept_dad")
    return state


def masq_rules(host: Netns) -> list[str]:
    return sorted(iptables_nat(host, 4) + iptables_nat(host, 6))


def store_files(data_dir: Path, network: str) -> dict[str, str]:
    d = data_dir / network
    if not d.is_dir():
        return {}
    return {p.name: p.read_bytes().decode() for p in d.iterdir() if p.name != "lock"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_config_same_network(
    run_cni: RunCni,
    make_host: Callable[[], Netns],
    sandbox: Sandbox,
    tmp_path: Path,
    scenario: str,
) -> None:
    fields, ipam, cni_args = SCENARIOS[scenario]
    network, bridge = unique("diff"), unique("cwd")
    hosts = {"ref": make_host(), "ours": make_host()}
    stores = {"ref": tmp_path / "ref", "ours": tmp_path / "ours"}
    confs = {k: config(k, network, bridge, fields, ipam, stores[k]) for k in hosts}
    sbs = {k: [sandbox() for _ in range(3)] for k in hosts}
    results: dict[str, list[dict[str, Any]]] = {"ref": [], "ours": []}
    raw: dict[str, list[dict[str, Any]]] = {"ref": [], "ours": []}
    for kind in ("ref", "ours"):
        names = {sb.path: f"<sandbox-{n}>" for n, sb in enumerate(sbs[kind])}
        for n, sb in enumerate(sbs[kind]):
            run = run_cni(
                confs[kind]["type"],
                "ADD",
                confs[kind],
                container_id=f"ctr{n}",
                netns=sb,
                cni_args=cni_args if n == 0 else "",
                host=hosts[kind],
            )
            raw[kind].append(run.expect_ok())
            results[kind].append(normalize_result(raw[kind][-1], names))
    assert results["ours"] == results["ref"]

    def states(kind: str) -> list[dict[str, Any]]:
        return [comparable_state(hosts[kind], sb, bridge) for sb in sbs[kind]]

    assert states("ours") == states("ref")
    assert masq_rules(hosts["ours"]) == masq_rules(hosts["ref"])
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        assert hosts["ours"].sysctl(key) == hosts["ref"].sysctl(key)
    assert store_files(stores["ours"], network) == store_files(stores["ref"], network)

    for kind in ("ref", "ours"):
        for n, sb in enumerate(sbs[kind]):
            run = run_cni(
                confs[kind]["type"],
                "CHECK",
                dict(confs[kind], prevResult=raw[kind][n]),
                container_id=f"ctr{n}",
                netns=sb,
                cni_args=cni_args if n == 0 else "",
                host=hosts[kind],
            )
            if kind == "ours" or scenario not in REFERENCE_CHECK_BUGS:
                run.expect_ok()
    for kind in ("ref", "ours"):
        for n, sb in enumerate(sbs[kind]):
            run_cni(
                confs[kind]["type"],
                "DEL",
                confs[kind],
                container_id=f"ctr{n}",
                netns=sb,
                host=hosts[kind],
            ).expect_ok()
    assert states("ours") == states("ref")
    assert all(s["container"] is None and s["host_veth"] is None for s in states("ours"))
    assert masq_rules(hosts["ours"]) == masq_rules(hosts["ref"])


@pytest.mark.parametrize("version", ["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_results_match_in_every_version_the_reference_speaks(
    run_cni: RunCni,
    make_host: Callable[[], Netns],
    sandbox: Sandbox,
    tmp_path: Path,
    version: str,
) -> None:
    network, bridge = unique("ver"), unique("cwv")
    out = {}
    for kind in ("ref", "ours"):
        c = config(kind, network, bridge, {"isGateway": True}, SINGLE, tmp_path / kind, version)
        sb = sandbox()
        run = run_cni(c["type"], "ADD", c, container_id="v", netns=sb, host=make_host())
        out[kind] = normalize_result(run.expect_ok(), {sb.path: "<sandbox>"})
    assert out["ours"] == out["ref"]


def test_check_matches_the_reference(
    run_cni: RunCni, make_host: Callable[[], Netns], sandbox: Sandbox, tmp_path: Path
) -> None:
    network, bridge = unique("chk"), unique("cwc")
    for kind in ("ref", "ours"):
        host = make_host()
        c = config(kind, network, bridge, {"isDefaultGateway": True}, DUAL, tmp_path / kind)
        sb = sandbox()
        prev = run_cni(c["type"], "ADD", c, container_id="k", netns=sb, host=host).expect_ok()
        checked = dict(c, prevResult=prev)
        run_cni(c["type"], "CHECK", checked, container_id="k", netns=sb, host=host).expect_ok()
        # Break the sandbox the same way for both: the address is gone.
        sb.exec("ip", "addr", "flush", "dev", "eth0", "scope", "global")
        bad = run_cni(c["type"], "CHECK", checked, container_id="k", netns=sb, host=host)
        assert bad.exit_code != 0, kind


HL_REF, HL_OURS = "host-local", OURS["host-local"]


def hl_conf(plugin: str, network: str, data_dir: Path, ipam: dict[str, Any]) -> dict[str, Any]:
    return {
        "cniVersion": REF_VERSION,
        "name": network,
        "type": plugin,
        "ipam": {**ipam, "type": plugin, "dataDir": str(data_dir)},
    }


def test_one_store_shared_by_both_host_locals(run_cni: RunCni, tmp_path: Path) -> None:
    network = unique("shared")
    ipam = {
        "ranges": [
            [{"subnet": "10.55.3.0/24", "rangeEnd": "10.55.3.7"}],
            [{"subnet": "fd00:56::/120", "rangeEnd": "fd00:56::7"}],
        ]
    }
    conf = {p: hl_conf(p, network, tmp_path, ipam) for p in (HL_REF, HL_OURS)}

    def add(plugin: str, cid: str) -> list[str]:
        out = run_cni(plugin, "ADD", conf[plugin], container_id=cid, netns="/x").expect_ok()
        return [ip["address"] for ip in out["ips"]]

    def delete(plugin: str, cid: str) -> None:
        run_cni(plugin, "DEL", conf[plugin], container_id=cid).expect_ok()

    assert add(HL_REF, "a") == ["10.55.3.2/24", "fd00:56::2/120"]
    assert add(HL_OURS, "b") == ["10.55.3.3/24", "fd00:56::3/120"]  # continues round-robin
    assert add(HL_REF, "c") == ["10.55.3.4/24", "fd00:56::4/120"]  # and back
    delete(HL_OURS, "a")  # ours releases the reference's lease
    delete(HL_REF, "b")  # the reference releases ours
    assert sorted(store_files(tmp_path, network)) == [
        "10.55.3.4",
        "fd00:56::4",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
    ]
    assert store_files(tmp_path, network)["10.55.3.4"] == "c\r\neth0"
    assert add(HL_OURS, "d") == ["10.55.3.5/24", "fd00:56::5/120"]
    assert add(HL_REF, "e") == ["10.55.3.6/24", "fd00:56::6/120"]
    assert add(HL_OURS, "f") == ["10.55.3.7/24", "fd00:56::7/120"]
    # wraps to the addresses released above, never to one that is held
    assert add(HL_REF, "g") == ["10.55.3.2/24", "fd00:56::2/120"]
    assert add(HL_OURS, "h") == ["10.55.3.3/24", "fd00:56::3/120"]
    both_full = [run_cni(p, "ADD", conf[p], container_id="z", netns="/x") for p in conf]
    assert all(r.exit_code != 0 for r in both_full)
    assert both_full[1].code == 110 and "10.55.3.1-10.55.3.7" in str(both_full[1].output)


def test_one_bridge_and_store_shared_across_add_and_del(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    network, bridge = unique("mix"), unique("cwm")
    fields = {"isGateway": True, "ipMasq": True}
    conf = {k: config(k, network, bridge, fields, DUAL, tmp_path) for k in ("ref", "ours")}
    sb_ref, sb_ours = sandbox(), sandbox()
    r1 = run_cni(conf["ref"]["type"], "ADD", conf["ref"], container_id="r", netns=sb_ref)
    r2 = run_cni(conf["ours"]["type"], "ADD", conf["ours"], container_id="o", netns=sb_ours)
    assert [ip["address"] for ip in r1.expect_ok()["ips"]] == ["10.55.1.2/24", "fd00:55::2/64"]
    assert [ip["address"] for ip in r2.expect_ok()["ips"]] == ["10.55.1.3/24", "fd00:55::3/64"]
    sb_ours.exec("ping", "-c", "1", "-W", "2", "10.55.1.2")  # both on one L2 segment
    rules = [r for r in masq_rules(cni_host) if r.startswith("-A")]
    assert len(rules) == 12  # 3 rules x 2 families x 2 attachments
    # Each implementation deletes what the other created.
    run_cni(conf["ours"]["type"], "DEL", conf["ours"], container_id="r", netns=sb_ref).expect_ok()
    run_cni(conf["ref"]["type"], "DEL", conf["ref"], container_id="o", netns=sb_ours).expect_ok()
    assert sb_ref.link("eth0") is None and sb_ours.link("eth0") is None
    assert masq_rules(cni_host) == []
    assert sorted(store_files(tmp_path, network)) == ["last_reserved_ip.0", "last_reserved_ip.1"]
    assert [x for x in cni_host.links() if x["ifname"].startswith("veth")] == []


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({"container_id": "a", "netns": "/x"}, b"{nope", 6),
        ({"container_id": "a", "netns": "/x"}, {"cniVersion": "7.0.0", "name": "n"}, 1),
        ({"netns": "/x"}, {"cniVersion": "1.0.0", "name": "n"}, 4),
        ({"container_id": "a b", "netns": "/x"}, {"cniVersion": "1.0.0", "name": "n"}, 4),
        (
            {"container_id": "a", "netns": "/x", "ifname": "e/0"},
            {"cniVersion": "1.0.0", "name": "n"},
            4,
        ),
        ({"container_id": "a", "netns": "/x"}, {"cniVersion": "1.0.0"}, 7),
    ],
)
def test_protocol_errors_match(run_cni: RunCni, env: dict[str, str], stdin: Any, code: int) -> None:
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    got: dict[str, CniRun] = {}
    for plugin in ("bridge", OURS["bridge"], "host-local", OURS["host-local"]):
        got[plugin] = run_cni(plugin, "ADD", raw, **env)  # type: ignore[arg-type]
    assert {p: r.code for p, r in got.items()} == dict.fromkeys(got, code)
