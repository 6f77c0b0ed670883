"""Host-gw route and masquerade planning (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from cni_operator import hostgw
from cni_operator.api import SpecError, parse_spec
from cni_operator.hostgw import Masquerade, PeerNode, Route, RoutingWish

from tests.unit.operator.test_crds import cel, rule_at

LOCAL = ["10.231.0.0/24"]


def node(
    name: str, ip: str | list[str] | None, *cidrs: str, legacy: bool = False
) -> dict[str, Any]:
    ips = [ip] if isinstance(ip, str) else (ip or [])
    spec: dict[str, Any] = {"podCIDR": cidrs[0]} if legacy else {"podCIDRs": list(cidrs)}
    return {
        "metadata": {"name": name},
        "spec": spec if cidrs else {},
        "status": {
            "addresses": [{"type": "Hostname", "address": name}]
            + [{"type": "InternalIP", "address": a} for a in ips]
        },
    }


def peers(*bodies: dict[str, Any]) -> list[PeerNode]:
    return [PeerNode.from_node(b) for b in bodies]


HGW = [RoutingWish("pods", host_gateway=True, ip_masq=False)]
CLUSTER = peers(
    node("a", "10.231.0.10", "10.244.0.0/24"),
    node("b", "10.231.0.11", "10.244.1.0/24"),
    node("c", "10.231.0.12", "10.244.2.0/24", legacy=True),
)


def test_peer_node_reads_pod_cidrs_and_internal_ip() -> None:
    legacy = PeerNode.from_node(node("c", "10.231.0.12", "10.244.2.0/24", legacy=True))
    assert legacy == PeerNode("c", ("10.231.0.12",), ("10.244.2.0/24",))
    dual = PeerNode.from_node(node("d", ["10.0.0.4", "fd00::4"], "10.244.3.0/24", "fd10:3::/64"))
    assert dual.internal_ips == ("10.0.0.4", "fd00::4")
    assert dual.pod_cidrs == ("10.244.3.0/24", "fd10:3::/64")


def test_every_other_node_is_routed_via_its_internal_ip() -> None:
    plan = hostgw.plan("a", CLUSTER, HGW, LOCAL, ["10.231.0.10"])
    assert plan.routes == (
        Route("10.244.1.0/24", "10.231.0.11", "b"),
        Route("10.244.2.0/24", "10.231.0.12", "c"),
    )
    assert plan.masquerade is None
    assert plan.skipped == ()
    assert plan.host_gateway


def test_no_routing_network_means_an_empty_plan() -> None:
    assert hostgw.plan("a", CLUSTER, [], LOCAL).empty
    only_masq = hostgw.plan("a", CLUSTER, [RoutingWish("p", False, True)], LOCAL)
    assert only_masq.routes == () and only_masq.masquerade is not None


def test_unreachable_or_unusable_peers_are_skipped_with_a_reason() -> None:
    nodes = peers(
        node("a", "10.231.0.10", "10.244.0.0/24"),
        node("far", "192.168.7.5", "10.244.5.0/24"),  # not on a connected subnet
        node("noip", None, "10.244.6.0/24"),
        node("nocidr", "10.231.0.13"),
        node("clash", "10.231.0.14", "10.244.0.128/25"),  # overlaps a's own CIDR
        node("v6only", "10.231.0.15", "fd10:7::/64"),
        node("selfip", "10.231.0.10", "10.244.8.0/24"),  # claims our own address
    )
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    assert plan.routes == ()
    text = "\n".join(plan.skipped)
    assert "far: InternalIP 192.168.7.5 is not on a directly connected subnet" in text
    assert "noip: no IPv4 InternalIP" in text
    assert "clash: podCIDR 10.244.0.128/25 overlaps" in text
    assert "v6only: no IPv6 InternalIP" in text
    assert "selfip" in text
    assert "nocidr" not in text  # a node without a podCIDR simply has nothing to route


def test_dual_stack_routes_each_family_via_its_own_address() -> None:
    nodes = peers(
        node("a", ["10.231.0.10", "fd00::10"], "10.244.0.0/24", "fd10::/64"),
        node("b", ["10.231.0.11", "fd00::11"], "10.244.1.0/24", "fd10:1::/64"),
    )
    plan = hostgw.plan("a", nodes, HGW, [*LOCAL, "fd00::/64"], ["10.231.0.10", "fd00::10"])
    assert set(plan.routes) == {
        Route("10.244.1.0/24", "10.231.0.11", "b"),
        Route("fd10:1::/64", "fd00::11", "b"),
    }


def test_masquerade_spares_every_pod_cidr_of_the_cluster_by_default() -> None:
    wish = [RoutingWish("pods", True, True)]
    plan = hostgw.plan("a", CLUSTER, wish, LOCAL)
    assert plan.masquerade == Masquerade(
        sources=("10.244.0.0/24",),
        cluster=("10.244.0.0/23", "10.244.2.0/24"),  # collapsed
    )
    declared = [RoutingWish("pods", True, True, ("10.244.0.0/16",))]
    plan = hostgw.plan("a", CLUSTER, declared, LOCAL)
    assert plan.masquerade is not None
    assert plan.masquerade.cluster == ("10.244.0.0/16",)


def test_masquerade_needs_our_own_pod_cidr() -> None:
    nodes = peers(node("a", "10.231.0.10"), node("b", "10.231.0.11", "10.244.1.0/24"))
    plan = hostgw.plan("a", nodes, [RoutingWish("pods", False, True)], LOCAL)
    assert plan.masquerade is None
    assert any("no spec.podCIDRs to masquerade from" in s for s in plan.skipped)


def test_route_changes_add_missing_replace_moved_and_remove_stale() -> None:
    desired = [
        Route("10.244.1.0/24", "10.231.0.11", "b"),
        Route("10.244.2.0/24", "10.231.0.22", "c"),  # c moved to a new address
    ]
    current = {
        ("10.244.1.0/24", "10.231.0.11"),
        ("10.244.2.0/24", "10.231.0.12"),
        ("10.244.9.0/24", "10.231.0.19"),  # a node that left
    }
    changes = hostgw.route_changes(current, desired)
    assert changes.add == (Route("10.244.2.0/24", "10.231.0.22", "c"),)
    assert changes.remove == (("10.244.9.0/24", "10.231.0.19"),)
    nothing = hostgw.route_changes({("10.244.1.0/24", "10.231.0.11")}, desired[:1])
    assert nothing.add == () and nothing.remove == ()


def test_nft_script_is_one_replacing_transaction() -> None:
    masq = Masquerade(("10.244.0.0/24", "fd10::/64"), ("10.244.0.0/16", "fd10::/48"))
    script = hostgw.nft_script(masq)
    lines = script.splitlines()
    assert lines[0] == f"table inet {hostgw.NFT_TABLE}"
    assert lines[1] == f"delete table inet {hostgw.NFT_TABLE}"
    assert "elements = { 10.244.0.0/16 }" in script
    assert "elements = { fd10::/48 }" in script
    assert "type nat hook postrouting priority srcnat; policy accept;" in script
    assert "ip saddr { 10.244.0.0/24 } ip daddr != @cluster4 ip daddr != 224.0.0.0/4 masq" in script
    assert "ip6 saddr { fd10::/64 } ip6 daddr != @cluster6 ip6 daddr != ff00::/8 masq" in script
    removal = hostgw.nft_script(None)
    assert removal.splitlines() == lines[:2]


def spec(**routing: Any) -> dict[str, Any]:
    return {
        "priority": 10,
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "ipam": {"type": "cniwarden-host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
        **({"routing": routing} if routing else {}),
    }


def test_wishes_come_from_the_applied_specs() -> None:
    specs = {
        "plain": spec(),
        "off": spec(mode="None"),
        "pods": spec(mode="HostGateway", ipMasq=True, clusterCIDRs=["10.244.0.0/16"]),
        "masq-only": spec(ipMasq=True),
    }
    assert hostgw.wishes_from_specs(specs) == [
        RoutingWish("masq-only", False, True),
        RoutingWish("pods", True, True, ("10.244.0.0/16",)),
    ]


def test_routing_is_part_of_the_spec_model() -> None:
    parsed = parse_spec(spec(mode="HostGateway"))
    assert parsed.routing is not None and parsed.routing.mode == "HostGateway"
    with pytest.raises(SpecError, match=r"spec\.routing\.mode"):
        parse_spec(spec(mode="hostgw"))
    with pytest.raises(SpecError, match="not a CIDR"):
        parse_spec(spec(mode="HostGateway", clusterCIDRs=["10.244.0.0/33"]))
    with pytest.raises(SpecError, match=r"spec\.routing\.ipmasq"):
        parse_spec(spec(ipmasq=True))


def test_report_names_routes_masquerade_and_skips() -> None:
    wish = [RoutingWish("pods", True, True)]
    nodes = [*CLUSTER, PeerNode("far", ("192.168.7.5",), ("10.244.5.0/24",))]
    report = hostgw.report(hostgw.plan("a", nodes, wish, LOCAL), applied=True)
    assert report["mode"] == "HostGateway"
    assert report["networks"] == ["pods"]
    assert {"destination": "10.244.1.0/24", "via": "10.231.0.11", "node": "b"} in report["routes"]
    assert report["masquerade"]["from"] == ["10.244.0.0/24"]
    assert report["skipped"] and report["applied"] is True
    assert "error" not in report
    failed = hostgw.report(hostgw.Plan(), applied=False, error="nft failed")
    assert failed["mode"] == "None" and failed["error"] == "nft failed"


def test_crd_refuses_host_gateway_without_use_pod_cidr() -> None:
    rule = rule_at("cninetworks.cniwarden.io", ".spec")
    assert cel(rule, self=spec(mode="HostGateway"))
    assert cel(rule, self=spec())
    fixed = spec(mode="HostGateway")
    fixed["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.9.0.0/16"}]]
    assert not cel(rule, self=fixed)
    assert cel(rule, self={**fixed, "routing": {"mode": "None", "ipMasq": True}})
    legacy = spec(mode="HostGateway")
    legacy["plugins"][0]["ipam"] = {"type": "host-local", "subnet": "usePodCIDR"}
    assert cel(rule, self=legacy)
