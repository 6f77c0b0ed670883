"""Host-gw route and masquerade planning (pure)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cni_operator import hostgw
from cni_operator.api import SpecError, parse_spec
from cni_operator.hostgw import Masquerade, PeerNode, Refusal, Route, RoutingWish
from hypothesis import given, settings
from hypothesis import strategies as st

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


CLUSTER_CIDRS = ("10.244.0.0/16", "fd10::/16")
HGW = [RoutingWish("pods", host_gateway=True, ip_masq=False, cluster_cidrs=CLUSTER_CIDRS)]
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
    assert "clash: podCIDR 10.244.0.128/25 overlaps this node's pod CIDR 10.244.0.0/24" in text
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
    wish = [RoutingWish("pods", True, True, CLUSTER_CIDRS)]
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


# ---- issue 11: host-gw routes only what a Node may claim --------------------------------


def refusals(plan: hostgw.Plan) -> dict[tuple[str, str], str]:
    return {(r.node, r.cidr): r.reason for r in plan.refused}


def test_host_gateway_without_cluster_cidrs_routes_nothing() -> None:
    """Any podCIDR used to become a route; without the cluster's CIDRs none can be judged."""
    plan = hostgw.plan("a", CLUSTER, [RoutingWish("pods", True, False)], LOCAL, ["10.231.0.10"])
    assert plan.routes == ()
    assert plan.skipped[-1] == (
        "network pods: HostGateway routes only pod CIDRs inside routing.clusterCIDRs, "
        "and it declares none"
    )
    assert refusals(plan) == {
        ("b", "10.244.1.0/24"): "podCIDR 10.244.1.0/24 is outside the network's "
        "routing.clusterCIDRs (none declared)",
        ("c", "10.244.2.0/24"): "podCIDR 10.244.2.0/24 is outside the network's "
        "routing.clusterCIDRs (none declared)",
    }


def test_a_claim_outside_the_cluster_cidrs_is_refused() -> None:
    """The review's 128.0.0.0/1: half the Internet routed to whoever wrote that Node."""
    nodes = [*CLUSTER, *peers(node("evil", "10.231.0.66", "128.0.0.0/1", "fd99::/64"))]
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    assert [r.node for r in plan.routes] == ["b", "c"]
    assert refusals(plan) == {
        ("evil", "128.0.0.0/1"): "podCIDR 128.0.0.0/1 is outside the network's "
        "routing.clusterCIDRs (10.244.0.0/16, fd10::/16)",
        ("evil", "fd99::/64"): "podCIDR fd99::/64 is outside the network's "
        "routing.clusterCIDRs (10.244.0.0/16, fd10::/16)",
    }
    assert plan.skipped[0].startswith("node evil: podCIDR 128.0.0.0/1 is outside")


def test_a_claim_on_another_nodes_range_is_refused_for_every_claimant() -> None:
    """Half of b's range claimed by d: which Node lies cannot be told, so neither is routed."""
    nodes = [*CLUSTER, *peers(node("d", "10.231.0.13", "10.244.1.128/25"))]
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    assert plan.routes == (Route("10.244.2.0/24", "10.231.0.12", "c"),)
    assert refusals(plan) == {
        ("b", "10.244.1.0/24"): "podCIDR 10.244.1.0/24 overlaps node d's podCIDR 10.244.1.128/25",
        ("d", "10.244.1.128/25"): "podCIDR 10.244.1.128/25 overlaps node b's podCIDR 10.244.1.0/24",
    }


def test_a_claim_outside_the_cluster_takes_nobodys_route() -> None:
    """10.0.0.0/8 covers every node's range but is refused on its own: it competes with none."""
    nodes = [*CLUSTER, *peers(node("greedy", "10.231.0.13", "10.0.0.0/8"))]
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    assert [r.node for r in plan.routes] == ["b", "c"]
    assert set(refusals(plan)) == {("greedy", "10.0.0.0/8")}


def test_a_claim_on_a_connected_subnet_is_refused() -> None:
    """A peer claiming the node network (a peer node's own subnet, or more) would divert the
    nodes' own traffic, even when the declared cluster range is wide enough to contain it."""
    wide = [RoutingWish("pods", True, False, ("10.0.0.0/8",))]
    for claim in ("10.231.0.0/25", "10.231.0.0/16"):
        nodes = [*CLUSTER, *peers(node("d", "10.231.0.13", claim))]
        plan = hostgw.plan("a", nodes, wide, LOCAL, ["10.231.0.10"])
        assert [r.node for r in plan.routes] == ["b", "c"]
        assert refusals(plan) == {
            ("d", claim): f"podCIDR {claim} overlaps 10.231.0.0/24, "
            "a directly connected subnet of this node"
        }


def test_a_claim_on_every_range_refuses_every_claimant() -> None:
    """Inside a wide declared range, one Node claiming all of it overlaps every Node: all
    are refused (fail closed, each one reported) rather than any traffic misrouted."""
    wide = [RoutingWish("pods", True, False, ("10.0.0.0/8",))]
    nodes = [*CLUSTER, *peers(node("e", "10.231.0.14", "10.244.0.0/15"))]
    plan = hostgw.plan("a", nodes, wide, LOCAL, ["10.231.0.10"])
    assert plan.routes == ()
    assert set(refusals(plan)) == {
        ("b", "10.244.1.0/24"),
        ("c", "10.244.2.0/24"),
        ("e", "10.244.0.0/15"),
    }
    assert refusals(plan)[("e", "10.244.0.0/15")].endswith("this node's pod CIDR 10.244.0.0/24")


def test_a_claim_on_our_own_range_is_refused() -> None:
    nodes = peers(
        node("a", "10.231.0.10", "10.244.0.0/24"), node("x", "10.231.0.9", "10.244.0.0/16")
    )
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    assert plan.routes == ()
    assert refusals(plan) == {
        ("x", "10.244.0.0/16"): "podCIDR 10.244.0.0/16 overlaps this node's pod CIDR 10.244.0.0/24"
    }


def test_every_refusal_is_in_the_node_report_by_node() -> None:
    nodes = [*CLUSTER, *peers(node("evil", "10.231.0.66", "128.0.0.0/1"))]
    plan = hostgw.plan("a", nodes, HGW, LOCAL, ["10.231.0.10"])
    report = hostgw.report(plan, applied=True)
    assert report["refused"] == [
        {
            "node": "evil",
            "podCIDR": "128.0.0.0/1",
            "reason": "podCIDR 128.0.0.0/1 is outside the network's routing.clusterCIDRs "
            "(10.244.0.0/16, fd10::/16)",
        }
    ]
    assert Refusal("evil", "128.0.0.0/1", "x").message == "node evil: x"
    # Nothing to install but something refused: still worth a report.
    refused_only = hostgw.plan("a", peers(node("evil", "10.231.0.66", "128.0.0.0/1")), HGW, LOCAL)
    assert refused_only.empty and not refused_only.silent


def test_peer_node_keeps_its_uid_for_events() -> None:
    body = node("b", "10.231.0.11", "10.244.1.0/24")
    body["metadata"]["uid"] = "1234-abcd"
    assert PeerNode.from_node(body).uid == "1234-abcd"


def test_crd_requires_cluster_cidrs_with_host_gateway() -> None:
    rule = rule_at("cninetworks.cniwarden.io", ".spec.routing")
    assert not cel(rule, self={"mode": "HostGateway"})
    assert not cel(rule, self={"mode": "HostGateway", "clusterCIDRs": []})
    assert cel(rule, self={"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]})
    assert cel(rule, self={"mode": "None", "ipMasq": True})
    assert cel(rule, self={"ipMasq": True})


def test_the_journal_of_displaced_routes_round_trips() -> None:
    routes = {
        "10.244.1.0/24": hostgw.DisplacedRoute("10.244.1.0/24", "10.231.0.11", 2, 3),
        "fd10:1::/64": hostgw.DisplacedRoute("fd10:1::/64", None, 7, 4),
    }
    assert hostgw.parse_displaced(hostgw.displaced_json(routes)) == routes
    assert hostgw.parse_displaced(hostgw.displaced_json({})) == {}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"version": 1, "rout', "not JSON"),
        (b"[]", "not a version 1 journal object"),
        (b'{"version": 2, "routes": []}', "not a version 1 journal object"),
        (b'{"version": 1, "routes": {}}', "'routes' is not a list"),
        (b'{"version": 1, "routes": [7]}', "routes[0]: not an object"),
        (b'{"version": 1, "routes": [{"protocol": 3}]}', "routes[0]: 'destination'"),
        (b'{"version": 1, "routes": [{"destination": "10.0.0.1/8", "protocol": 3}]}', "routes[0]"),
        (b'{"version": 1, "routes": [{"destination": "10.0.0.0/8", "protocol": "3"}]}', "integers"),
        (b'{"version": 1, "routes": [{"destination": "10.0.0.0/8", "protocol": 157}]}', "157"),
        (
            b'{"version": 1, "routes": [{"destination": "10.0.0.0/8", "gateway": "x", '
            b'"protocol": 3}]}',
            "routes[0]",
        ),
    ],
)
def test_a_journal_that_cannot_be_read_says_why(raw: bytes, says: str) -> None:
    with pytest.raises(hostgw.DisplacedJournalError, match=re.escape(says)):
        hostgw.parse_displaced(raw)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "destination": JSON | st.sampled_from(["10.0.0.0/8", "fd00::/8", "10.0.0.1/8"]),
        "gateway": JSON | st.sampled_from(["10.0.0.1", "fd00::1"]),
        "oif": JSON,
        "protocol": JSON | st.integers(-1, 300),
    },
)
JOURNALS = (
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.lists(ENTRY | JSON, max_size=4).map(
        lambda routes: json.dumps({"version": 1, "routes": routes}).encode()
    )
)


@settings(max_examples=400, deadline=None)
@given(JOURNALS)
def test_the_journal_parser_survives_any_bytes(raw: bytes) -> None:
    """Either routes it can put back, or DisplacedJournalError (never another exception)."""
    try:
        routes = hostgw.parse_displaced(raw)
    except hostgw.DisplacedJournalError:
        return
    for key, route in routes.items():
        assert key == route.destination and route.protocol != hostgw.ROUTE_PROTOCOL
