"""The slim projection of the Nodes (noderoutes.py): what it keeps from a Node, that a
heartbeat changes nothing in it, how a full list merges with the watch, its size
bound, and the controller's publisher (writes only on a change, only after a list)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cni_operator import noderoutes
from cni_operator.controller import Controller, ControllerSettings
from cni_operator.hostgw import PeerNode
from cni_operator.noderoutes import Projection

ROOT = Path(__file__).resolve().parents[3]


def node(
    name: str,
    cidr: str = "10.244.1.0/24",
    ip: str = "10.0.0.1",
    version: int = 1,
    beat: str = "2026-12-05T10:00:00Z",
) -> dict[str, Any]:
    """A Node as the API server sends it: most of it is status that changes all the time."""
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": str(version),
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": beat},
            ],
            "allocatable": {"cpu": "2", "memory": "8Gi"},
            "images": [{"names": ["busybox"], "sizeBytes": 1}],
        },
    }


def heartbeat(body: dict[str, Any], version: int) -> dict[str, Any]:
    """The same Node after a status heartbeat, a label and an annotation change."""
    beat = copy.deepcopy(body)
    beat["metadata"]["resourceVersion"] = str(version)
    beat["metadata"]["labels"]["extra"] = "x"
    beat["metadata"]["annotations"]["touched"] = str(version)
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = f"2026-12-05T10:00:{version:02d}Z"
    beat["status"]["conditions"][0]["status"] = "False"
    beat["status"]["images"].append({"names": ["pause"], "sizeBytes": 2})
    return beat


def test_a_node_is_its_name_uid_pod_cidrs_and_internal_ips() -> None:
    (peer,) = noderoutes.peers_of(noderoutes.body_of([PeerNode.from_node(node("a"))])) or ()
    assert peer == PeerNode("a", ("10.0.0.1",), ("10.244.1.0/24",), "uid-a")
    assert noderoutes.spec_of([peer]) == {
        "nodes": [
            {
                "name": "a",
                "uid": "uid-a",
                "podCIDRs": ["10.244.1.0/24"],
                "internalIPs": ["10.0.0.1"],
            }
        ]
    }


def test_the_spec_is_sorted_so_the_same_nodes_are_the_same_text() -> None:
    a, b = PeerNode.from_node(node("a")), PeerNode.from_node(node("b", "10.244.2.0/24"))
    assert noderoutes.spec_of([b, a]) == noderoutes.spec_of([a, b])


def test_heartbeats_labels_and_conditions_change_nothing() -> None:
    view = Projection()
    assert view.on_node("ADDED", node("a"))
    for version in range(2, 12):
        assert not view.on_node("MODIFIED", heartbeat(node("a", version=version), version))
    assert view.snapshot() == (PeerNode.from_node(node("a")),)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("pod CIDR", PeerNode("a", ("10.0.0.1",), ("10.244.9.0/24",), "uid-a")),
        ("InternalIP", PeerNode("a", ("10.0.0.9",), ("10.244.1.0/24",), "uid-a")),
    ],
)
def test_a_new_pod_cidr_or_internal_ip_is_a_change(change: str, expected: PeerNode) -> None:
    view = Projection()
    view.on_node("ADDED", node("a"))
    changed = (
        node("a", cidr="10.244.9.0/24", version=2)
        if change == "pod CIDR"
        else node("a", ip="10.0.0.9", version=2)
    )
    assert view.on_node("MODIFIED", changed)
    assert view.snapshot() == (expected,)


def test_joining_and_leaving_are_changes() -> None:
    view = Projection()
    assert view.on_node("ADDED", node("a"))
    assert view.on_node("ADDED", node("b", "10.244.2.0/24"))
    assert view.on_node("DELETED", node("a"))
    assert not view.on_node("DELETED", node("a")), "gone already"
    assert [p.name for p in view.snapshot()] == ["b"]
    assert not view.on_node("ADDED", {"metadata": {}}), "a nameless object is ignored"


def test_a_full_list_is_the_truth_except_for_newer_watch_copies() -> None:
    view = Projection()
    assert not view.listed
    view.on_node("ADDED", node("a", version=5))
    view.on_node("ADDED", node("fresh", "10.244.7.0/24", version=30))  # after the list
    view.on_node("ADDED", node("old", "10.244.8.0/24", version=3))  # gone by the list
    view.on_node("MODIFIED", node("b", "10.244.2.0/24", ip="10.0.0.22", version=25))
    changed = view.merge_listing(
        [
            node("a", version=5),
            node("b", "10.244.2.0/24", ip="10.0.0.2", version=12),  # older than the watch's
            node("c", "10.244.3.0/24", version=14),  # the watch had not sent it yet
        ],
        listed_rv=20,
    )
    assert changed and view.listed
    by_name = {p.name: p for p in view.snapshot()}
    assert sorted(by_name) == ["a", "b", "c", "fresh"]
    assert by_name["b"].internal_ips == ("10.0.0.22",)
    again = [
        node("a", version=5),
        node("b", "10.244.2.0/24", ip="10.0.0.22", version=25),
        node("c", "10.244.3.0/24", version=14),
        node("fresh", "10.244.7.0/24", version=30),
    ]
    assert not view.merge_listing(
        again,
        listed_rv=31,
    ), "the same nodes again: no change"


def test_no_object_or_no_list_is_unknown_an_empty_list_is_no_nodes() -> None:
    assert noderoutes.peers_of(None) is None
    assert noderoutes.peers_of({"metadata": {"name": "cluster"}}) is None
    assert noderoutes.peers_of({"spec": {"nodes": None}}) is None
    assert noderoutes.peers_of({"spec": {"nodes": []}}) == ()
    assert noderoutes.peers_of({"spec": {"nodes": [{"podCIDRs": []}, "x"]}}) == ()


def test_needs_write_only_when_the_list_differs() -> None:
    peers = [PeerNode.from_node(node("a")), PeerNode.from_node(node("b", "10.244.2.0/24"))]
    stored = json.loads(json.dumps(noderoutes.body_of(peers)))  # as read back from the server
    stored["metadata"]["resourceVersion"] = "77"
    assert noderoutes.needs_write(None, peers)
    assert not noderoutes.needs_write(stored, list(reversed(peers)))
    assert noderoutes.needs_write(stored, peers[:1])


def test_five_thousand_dual_stack_nodes_fit_under_the_bound() -> None:
    peers = [
        PeerNode(
            f"node-{i:05d}-{'x' * 29}",  # 40 characters
            (f"10.{i // 250}.{i % 250}.10", f"fd00:10::{i:x}"),
            (f"10.{100 + i // 250}.{i % 250}.0/24", f"fd00:244:{i:x}::/64"),
            "6f1c0a0e-53a1-4a8e-9d7e-0123456789ab",
        )
        for i in range(5000)
    ]
    size = noderoutes.encoded_size(noderoutes.spec_of(peers))
    assert size < noderoutes.MAX_BYTES < 1.5 * 1024 * 1024, size
    assert 900 * 1024 < size < 1000 * 1024, f"the docstring says ~940 KiB: {size}"


def test_the_spec_matches_the_crd_schema() -> None:
    crd = yaml.safe_load((ROOT / "crds/cninoderoutes.cniwarden.io.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    item = schema["properties"]["nodes"]["items"]
    spec = noderoutes.spec_of([PeerNode.from_node(node("a"))])
    assert set(spec) == set(schema["properties"])
    assert set(spec["nodes"][0]) == set(item["properties"])
    assert item["required"] == ["name"]
    assert crd["spec"]["names"]["plural"] == noderoutes.PLURAL
    assert crd["spec"]["names"]["kind"] == noderoutes.KIND


# ------------------------------------------------------------- the publisher
class StoreKube:
    """The API server as the publisher sees it: a list of Nodes, one stored object."""

    def __init__(self, nodes: list[dict[str, Any]], stored: dict[str, Any] | None = None) -> None:
        self.nodes = nodes
        self.stored = stored
        self.writes: list[dict[str, Any]] = []
        self.lists = 0

    def list_nodes_with_version(self) -> tuple[int, list[dict[str, Any]]]:
        self.lists += 1
        return 100, copy.deepcopy(self.nodes)

    def get_node_routes(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.stored)

    def write_node_routes(self, spec: dict[str, Any], exists: bool) -> dict[str, Any]:
        assert exists == (self.stored is not None)
        self.writes.append(spec)
        self.stored = {"metadata": {"name": noderoutes.NAME}, "spec": copy.deepcopy(spec)}
        return self.stored


def controller(kube: StoreKube) -> Controller:
    made = Controller(ControllerSettings())
    made._kube = kube  # type: ignore[assignment]
    return made


def test_the_publisher_lists_first_then_writes_only_changes() -> None:
    kube = StoreKube([node("a"), node("b", "10.244.2.0/24")])
    made = controller(kube)

    async def scenario() -> None:
        made.on_node_route("ADDED", node("a"))  # the watch's first event: not a full view
        await made._publish_routes()
        assert kube.lists == 1, "a full list before the first write"
        assert [n["name"] for n in kube.writes[0]["nodes"]] == ["a", "b"]
        made.routes_wake.clear()
        for version in range(2, 6):
            made.on_node_route("MODIFIED", heartbeat(node("b", "10.244.2.0/24"), version))
        assert not made.routes_wake.is_set(), "a heartbeat wakes no publisher"
        await made._publish_routes()
        assert len(kube.writes) == 1
        made.on_node_route("ADDED", node("c", "10.244.3.0/24", version=200))
        assert made.routes_wake.is_set()
        await made._publish_routes()
        assert [n["name"] for n in kube.writes[-1]["nodes"]] == ["a", "b", "c"]
        made.on_node_route("DELETED", node("c", "10.244.3.0/24", version=201))
        await made._publish_routes()
        assert [n["name"] for n in kube.writes[-1]["nodes"]] == ["a", "b"]
        assert len(kube.writes) == 3

    asyncio.run(scenario())


def test_the_first_full_list_seeds_the_selection_and_marks_every_network() -> None:
    """Until then the controller computes no status: the watch streams Nodes one by
    one, and a selection from the first few would call a network Ready on them alone."""
    kube = StoreKube([node("a"), node("b", "10.244.2.0/24")])
    made = controller(kube)
    made.networks["net"] = {"metadata": {"name": "net"}}
    made.nodes["a"] = {"metadata": {"name": "a", "labels": {"watch": "newer"}}, "spec": {}}
    assert not made.routes.listed
    asyncio.run(made._publish_routes())
    assert made.routes.listed
    assert sorted(made.nodes) == ["a", "b"]
    assert made.nodes["a"]["metadata"]["labels"] == {"watch": "newer"}, "the watch's copy stays"
    assert made.nodes["b"]["metadata"]["labels"] == {"kubernetes.io/hostname": "b"}
    assert made.dirty == {"net"} and made.wake.is_set()


def test_a_restarted_controller_does_not_rewrite_an_unchanged_projection() -> None:
    nodes = [node("a"), node("b", "10.244.2.0/24")]
    stored = noderoutes.body_of(PeerNode.from_node(n) for n in nodes)
    kube = StoreKube(nodes, stored)
    asyncio.run(controller(kube)._publish_routes())
    assert kube.writes == []


def test_over_the_size_bound_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noderoutes, "MAX_BYTES", 100)
    kube = StoreKube([node("a"), node("b", "10.244.2.0/24")])
    asyncio.run(controller(kube)._publish_routes())
    assert kube.writes == [], "never a truncated list (it would read as nodes gone)"


# ------------------------------------------------------ host-gw on the agent
ROUTED = {
    "pods": {
        "priority": 10,
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "ipam": {"type": "cniwarden-host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
        "routing": {"mode": "HostGateway", "ipMasq": True, "clusterCIDRs": ["10.244.0.0/16"]},
    }
}


def test_unknown_peers_leave_the_kernel_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that has no projection yet (an upgrade, before the controller publishes)
    neither removes routes nor rewrites the masquerade rule: it does not open netlink."""
    from cni_operator import hostgw_node  # noqa: PLC0415

    from node_plugin.kernel import netlink  # noqa: PLC0415

    def no_kernel() -> Any:
        raise AssertionError("host-gw touched the kernel without knowing the peers")

    monkeypatch.setattr(netlink, "opened", no_kernel)
    gateway = hostgw_node.HostGatewayNode("a")
    assert gateway.set_own(node("a", "10.244.0.0/24"))
    report = gateway.sync(ROUTED)
    assert report is not None and report["applied"] is False
    assert report["skipped"] == [hostgw_node.WAITING_FOR_PEERS]
    assert report["mode"] == "HostGateway" and report["networks"] == ["pods"]
    assert gateway.set_peers([PeerNode.from_node(node("b"))])
    assert not gateway.set_peers([PeerNode.from_node(node("b"))]), "the same peers"
    assert gateway.set_peers(None)
    assert gateway.sync(ROUTED) == report


def test_own_node_wins_over_its_line_in_the_projection() -> None:
    from cni_operator.hostgw_node import HostGatewayNode  # noqa: PLC0415

    gateway = HostGatewayNode("a")
    gateway.set_peers(
        [PeerNode.from_node(node("a", "10.244.0.0/24")), PeerNode.from_node(node("b"))]
    )
    assert {p.name: p.pod_cidrs for p in gateway.nodes()} == {
        "a": ("10.244.0.0/24",),
        "b": ("10.244.1.0/24",),
    }
    gateway.set_own(node("a", "10.244.5.0/24"))
    assert {p.name: p.pod_cidrs for p in gateway.nodes()}["a"] == ("10.244.5.0/24",)
    assert not gateway.set_own(heartbeat(node("a", "10.244.5.0/24"), 7)), "a heartbeat"
