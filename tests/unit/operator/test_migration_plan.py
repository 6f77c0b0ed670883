"""CNIMigration planning (cni_operator.migration.plan and .spec): the spec model,
waves, the compatibility check and which pods are evicted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cni_operator.api import NetworkSpec
from cni_operator.migration.plan import (
    SWITCH_LABEL,
    NodeInfo,
    NodeNetworks,
    OldNetwork,
    acknowledgement,
    agent_word_on,
    check_compatibility,
    eviction_plan,
    initial_records,
    old_network_on,
    old_network_report,
    runtime_view,
    selected,
    waves,
)
from cni_operator.migration.spec import ALL_PEERS, MigrationSpec
from cni_operator.migration.steps import Step
from cni_operator.switch_gate import acknowledged
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

TO = "cw-net"


def spec(**fields: Any) -> MigrationSpec:
    body: dict[str, Any] = {"from": {"networkName": "bridge-net"}, "to": {"cniNetwork": TO}}
    body.update(fields)
    return MigrationSpec.model_validate(body)


# --- the spec model ----------------------------------------------------------------


def test_spec_defaults() -> None:
    parsed = spec()
    assert parsed.source.networkName == "bridge-net"
    assert parsed.waves.maxUnavailable == 1
    assert parsed.drain.timeoutSeconds == 600
    assert parsed.drain.gracePeriodSeconds is None
    assert tuple(parsed.verify.peers) == ALL_PEERS
    assert (parsed.pause, parsed.resume, parsed.skipNodes, parsed.rollback) == (False, 0, [], False)
    assert parsed.from_label == "network bridge-net"


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"from": {}}, "from needs exactly one of networkName"),
        ({"from": {"networkName": "a", "cniNetwork": "b"}}, "from needs exactly one"),
        ({"from": {"cniNetwork": TO}}, "a network cannot be migrated to itself"),
        ({"waves": {"order": ["a"]}}, "set byLabel too"),
        ({"waves": {"byLabel": "zone", "order": ["a", "a"]}}, "lists a value twice"),
        ({"waves": {"maxUnavailable": 0}}, "greater than or equal to 1"),
        ({"drain": {"timeoutSeconds": 0}}, "greater than or equal to 1"),
        ({"verify": {"peers": ["Internet"]}}, "MigratedNode"),
        ({"paws": True}, "Extra inputs are not permitted"),
    ],
)
def test_spec_refusals_say_what_to_fix(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        spec(**fields)


# --- waves -------------------------------------------------------------------------


def node(name: str, cidr: str = "", **labels: str) -> NodeInfo:
    return NodeInfo(name, labels, (cidr,) if cidr else ())


def test_node_info_from_a_node_object() -> None:
    obj = {
        "metadata": {"name": "w1", "labels": {"zone": "a"}},
        "spec": {"podCIDR": "10.244.1.0/24", "unschedulable": True},
    }
    assert NodeInfo.from_node(obj) == NodeInfo("w1", {"zone": "a"}, ("10.244.1.0/24",), True)
    dual = {"metadata": {"name": "w2"}, "spec": {"podCIDRs": ["10.244.2.0/24", "fd00:2::/64"]}}
    assert NodeInfo.from_node(dual).pod_cidrs == ("10.244.2.0/24", "fd00:2::/64")


def test_waves_by_label_in_the_given_order_then_sorted_then_unlabelled() -> None:
    nodes = [
        node("n5"),
        node("n4", zone="c"),
        node("n3", zone="b"),
        node("n2", zone="a"),
        node("n1", zone="b"),
        node("n0", zone="x", pool="gpu"),
    ]
    plan = spec(waves={"byLabel": "zone", "order": ["b", "q"]})
    assert waves(nodes, plan) == [["n1", "n3"], ["n2"], ["n4"], ["n0"], ["n5"]]
    assert waves(nodes, spec()) == [["n0", "n1", "n2", "n3", "n4", "n5"]]
    assert waves(nodes, spec(nodeSelector={"pool": "gpu"})) == [["n0"]]
    assert waves(nodes, spec(nodeSelector={"pool": "none"})) == []
    records = initial_records(nodes, plan)
    assert [(r.name, r.wave, r.step) for r in records][:3] == [
        ("n1", 0, Step.PENDING),
        ("n3", 0, Step.PENDING),
        ("n2", 1, Step.PENDING),
    ]


@given(
    labels=st.lists(st.one_of(st.none(), st.sampled_from("abcd")), max_size=20),
    order=st.lists(st.sampled_from("abcde"), unique=True, max_size=5),
)
def test_every_selected_node_is_in_exactly_one_nonempty_wave(
    labels: list[str | None], order: list[str]
) -> None:
    nodes = [node(f"n{i}", **({"zone": v} if v else {})) for i, v in enumerate(labels)]
    plan = waves(nodes, spec(waves={"byLabel": "zone", "order": order}))
    flat = [name for wave in plan for name in wave]
    assert sorted(flat) == sorted(n.name for n in nodes)
    assert all(plan)
    for wave in plan:  # one label value per wave
        assert len({dict(n.labels).get("zone") for n in nodes if n.name in wave}) == 1
    assert selected(nodes, {}) == sorted(nodes, key=lambda n: n.name)


# --- the compatibility check -------------------------------------------------------


def target(**changes: Any) -> NetworkSpec:
    plugin: dict[str, Any] = {
        "type": "cniwarden-bridge",
        "bridge": "cni0",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
    }
    body: dict[str, Any] = {
        "priority": 5,
        "plugins": [plugin],
        "shadowPolicy": "Quarantine",
        "nodeSelector": {SWITCH_LABEL: TO},
        "routing": {"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]},
    }
    body.update(changes)
    return NetworkSpec.model_validate(body)


def conflist(first: dict[str, Any], name: str = "bridge-net") -> bytes:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": name, "plugins": [first, {"type": "portmap"}]}
    ).encode()


def reference_bridge(subnet: str, bridge: str | None = "cni0") -> bytes:
    plugin: dict[str, Any] = {
        "type": "bridge",
        "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
    }
    if bridge is not None:
        plugin["bridge"] = bridge
    return conflist(plugin)


def cluster(*cidrs: str, old: Any = reference_bridge) -> list[NodeNetworks]:
    return [
        NodeNetworks(node(f"w{i}", cidr), OldNetwork.from_conflist(old(cidr)))
        for i, cidr in enumerate(cidrs)
    ]


def reasons(*args: Any, **kwargs: Any) -> list[str]:
    return [str(r) for r in check_compatibility(*args, **kwargs)]


def test_a_reference_bridge_over_each_pod_cidr_qualifies() -> None:
    nodes = cluster("10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24")
    assert reasons(spec(), target(), nodes) == []
    # The bridge name defaults to cni0 on both sides.
    nodes = cluster("10.244.0.0/24", old=lambda c: reference_bridge(c, bridge=None))
    plugin = {**target().plugins[0]}
    del plugin["bridge"]
    assert reasons(spec(), target(plugins=[plugin]), nodes) == []


def test_ptp_with_host_local_over_the_pod_cidr_qualifies_with_any_bridge() -> None:
    def ptp(cidr: str) -> bytes:
        return conflist({"type": "ptp", "ipam": {"type": "host-local", "subnet": cidr}})

    plugin = {**target().plugins[0], "bridge": "cw0"}
    assert reasons(spec(), target(plugins=[plugin]), cluster("10.244.0.0/24", old=ptp)) == []


def test_one_fixed_subnet_on_every_node_is_refused() -> None:
    nodes = [
        NodeNetworks(
            node("w0", "10.244.0.0/24"), OldNetwork.from_conflist(reference_bridge("10.22.0.0/16"))
        ),
        NodeNetworks(
            node("w1", "10.244.1.0/24"), OldNetwork.from_conflist(reference_bridge("10.22.0.0/16"))
        ),
    ]
    found = reasons(spec(), target(), nodes)
    assert found == [
        f"node w{i}: network bridge-net allocates from 10.22.0.0/16, not from the node's pod "
        f"CIDR 10.244.{i}.0/24: the new network uses the pod CIDR, so the per-node ranges "
        "would change mid-migration"
        for i in (0, 1)
    ]


def test_overlapping_pod_cidrs_are_refused_naming_both_nodes() -> None:
    found = reasons(spec(), target(), cluster("10.244.0.0/24", "10.244.0.0/23"))
    assert found == [
        "node w1: pod CIDR 10.244.0.0/23 overlaps node w0's 10.244.0.0/24: an address would "
        "not say which node its pod is on"
    ]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"routing": None}, "has routing.mode None: it must be HostGateway"),
        (
            {
                "plugins": [
                    {
                        "type": "cniwarden-bridge",
                        "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"},
                    }
                ]
            },
            "its first plugin's IPAM must allocate from subnet usePodCIDR",
        ),
        ({"nodeSelector": {}}, f"must select nodes by {SWITCH_LABEL}={TO}"),
        ({"shadowPolicy": "Report"}, "needs shadowPolicy Quarantine"),
        (
            {"routing": {"mode": "HostGateway", "clusterCIDRs": ["10.96.0.0/16"]}},
            "pod CIDR 10.244.0.0/24 lies outside to.cniNetwork's routing.clusterCIDRs 10.96.0.0/16",
        ),
        (
            {"plugins": [{**target().plugins[0], "bridge": "cw0"}]},
            "network bridge-net uses bridge cni0 and the new network bridge cw0",
        ),
    ],
)
def test_a_target_that_cannot_keep_connectivity_is_refused(
    changes: dict[str, Any], complaint: str
) -> None:
    found = reasons(spec(), target(**changes), cluster("10.244.0.0/24"))
    assert len(found) == 1 and complaint in found[0], found


@pytest.mark.parametrize(
    ("old", "complaint"),
    [
        (
            conflist({"type": "flannel", "delegate": {"isDefaultGateway": True}}),
            "starts with plugin type flannel; only bridge, cniwarden-bridge, ptp",
        ),
        (
            conflist({"type": "bridge", "ipam": {"type": "dhcp"}}),
            "uses IPAM dhcp; only host-local qualifies",
        ),
    ],
)
def test_old_networks_that_do_not_qualify(old: bytes, complaint: str) -> None:
    nodes = [NodeNetworks(node("w0", "10.244.0.0/24"), OldNetwork.from_conflist(old))]
    found = reasons(spec(), target(), nodes)
    assert any(complaint in r for r in found), found


def test_nodes_without_pod_cidr_or_old_file_are_named() -> None:
    nodes = [NodeNetworks(node("bare"), None), NodeNetworks(node("w1", "10.244.1.0/24"), None)]
    assert reasons(spec(), target(), nodes) == [
        "node bare: has no spec.podCIDRs: host-gw cannot route its pods",
        "node w1: has no config file of network bridge-net; skip it or select fewer nodes",
    ]


def test_from_a_cni_network() -> None:
    moving = spec(**{"from": {"cniNetwork": "old-net"}})
    nodes = [NodeNetworks(node("w0", "10.244.0.0/24"), None)]
    old = target(nodeSelector={})
    assert reasons(moving, target(), nodes, from_network=old) == []
    flat = target(routing=None)
    assert reasons(moving, target(), nodes, from_network=flat) == [
        "from.cniNetwork old-net must route with HostGateway and allocate from usePodCIDR, "
        "like the new network"
    ]
    other_bridge = target(plugins=[{**target().plugins[0], "bridge": "old0"}])
    assert any(
        "uses bridge old0 and to.cniNetwork cw-net bridge cni0" in r
        for r in reasons(moving, target(), nodes, from_network=other_bridge)
    )


@pytest.mark.parametrize(
    ("content", "complaint"),
    [(b"{", "not JSON"), (b"[]", "not a JSON object"), (b'{"plugins": []}', "no plugins")],
)
def test_an_unreadable_old_file_is_named(content: bytes, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        OldNetwork.from_conflist(content)


def test_old_network_parsing() -> None:
    single = json.dumps(
        {"name": "n", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}
    ).encode()
    assert OldNetwork.from_conflist(single) == OldNetwork(
        "n", "bridge", "cni0", "host-local", ("10.1.0.0/24",)
    )
    dual = reference_bridge("10.1.0.0/24", bridge="br-x")
    parsed = OldNetwork.from_conflist(dual)
    assert (parsed.bridge, parsed.subnets) == ("br-x", ("10.1.0.0/24",))


# --- which pods to evict -----------------------------------------------------------


def pod(name: str, **parts: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "uid": f"uid-{name}"}
    meta.update(parts.pop("meta", {}))
    return {
        "metadata": meta,
        "spec": parts.pop("spec", {}),
        "status": parts.pop("status", {"phase": "Running"}),
    }


def test_eviction_skips_daemonset_static_mirror_hostnetwork_and_finished_pods() -> None:
    pods = [
        pod("web", meta={"ownerReferences": [{"kind": "ReplicaSet", "controller": True}]}),
        pod("ds", meta={"ownerReferences": [{"kind": "DaemonSet", "controller": True}]}),
        pod("mirror", meta={"annotations": {"kubernetes.io/config.mirror": "x"}}),
        pod("static", meta={"ownerReferences": [{"kind": "Node", "controller": True}]}),
        pod("proxy", spec={"hostNetwork": True}),
        pod("job", status={"phase": "Succeeded"}),
        pod("going", meta={"deletionTimestamp": "2026-12-05T12:00:00Z"}),
        pod("bare"),
    ]
    plan = eviction_plan(pods)
    assert [p.name for p in plan.evict] == ["web", "bare"]
    assert [p.name for p in plan.leaving] == ["going"]
    assert plan.remaining == 3
    kept = {p.name: why for p, why in plan.kept}
    assert set(kept) == {"ds", "mirror", "static", "proxy", "job"}
    assert kept["ds"].startswith("DaemonSet pod")
    assert kept["proxy"].startswith("hostNetwork pod")
    assert kept["mirror"] == kept["static"] == "static pod: the kubelet owns it"
    assert plan.evict[0].uid == "uid-web"


def test_runtime_view_from_the_node_report() -> None:
    def state(judged: list[str] | None, **views: tuple[str, bool]) -> dict[str, Any]:
        status: dict[str, Any] = {
            "runtimes": {
                r: {"network": n, "healthy": h, "message": f"{r} ok"} for r, (n, h) in views.items()
            }
        }
        if judged is not None:
            status["runtime"] = {"judgedBy": judged}
        return {"status": status}

    view = runtime_view(state(["containerd"], containerd=(TO, True), crio=("old", False)))
    assert (view.network, view.healthy) == (TO, True)
    both = runtime_view(state(None, containerd=(TO, True), crio=("old", True)))
    assert both.network is None and "disagree" in both.message
    assert runtime_view(None).message == "the node's agent has not reported yet"
    sick = runtime_view(state(["crio"], crio=(TO, False)))
    assert (sick.network, sick.healthy) == (TO, False)


def test_the_agent_reports_each_foreign_network_for_the_check() -> None:
    content = reference_bridge("10.244.3.0/24", bridge="br0")
    report = old_network_report(content)
    assert report == {
        "name": "bridge-net",
        "type": "bridge",
        "bridge": "br0",
        "ipamType": "host-local",
        "subnets": ["10.244.3.0/24"],
    }
    assert old_network_report(None) == {"error": "unreadable"}
    assert old_network_report(b"{")["error"].startswith("not JSON")
    state = {
        "status": {
            "foreignFiles": [
                {"path": "/etc/cni/net.d/00-x.conf", "network": {"error": "not JSON"}},
                {"path": "/etc/cni/net.d/10-bridge.conflist", "network": report},
            ]
        }
    }
    assert old_network_on(state, "bridge-net") == OldNetwork.from_conflist(content)
    assert old_network_on(state, "other") is None
    assert old_network_on(None, "bridge-net") is None


def test_the_switch_acknowledgement_is_scoped_to_the_node_and_generation() -> None:
    gen, nodes = "cniwarden.io/proceed-generation", "cniwarden.io/proceed-nodes"
    assert acknowledgement({}, 4, "w1") == {gen: "4", nodes: "w1"}
    # Another node of the same generation stays acknowledged.
    assert acknowledgement({gen: "4", nodes: "w0"}, 4, "w1") == {gen: "4", nodes: "w0,w1"}
    # An older generation's nodes are dropped: the gate ignores them anyway.
    assert acknowledgement({gen: "3", nodes: "w0"}, 4, "w1") == {gen: "4", nodes: "w1"}
    assert acknowledgement({gen: "4", nodes: "w0, w1"}, 4, "w1") is None
    assert acknowledgement({gen: "4", nodes: "*"}, 4, "w1") is None
    # What it writes is what the gate reads.
    written = acknowledgement({gen: "4", nodes: "w0"}, 4, "w1")
    assert written is not None
    assert acknowledged(written, 4, "w1") and acknowledged(written, 4, "w0")
    assert not acknowledged(written, 5, "w1")


def test_a_failed_switch_names_what_the_agent_reports_about_the_target() -> None:
    missing = {
        "name": "cw",
        "state": "Invalid",
        "message": "not written, the last good config stays: plugin type x not installed",
    }
    state = {"status": {"networks": [{"name": "other", "state": "Invalid"}, missing]}}
    assert agent_word_on(state, "cw") == (
        "Invalid: not written, the last good config stays: plugin type x not installed"
    )
    assert agent_word_on({"status": {"networks": [{"name": "cw", "state": "Applied"}]}}, "cw") == ""
    assert agent_word_on({"status": {"networks": [{"name": "cw", "state": "Blocked"}]}}, "cw") == (
        "Blocked"
    )
    assert agent_word_on(None, "cw") == ""
    assert agent_word_on({"status": {"networks": ["junk", {"name": "cw"}]}}, "cw") == ""
