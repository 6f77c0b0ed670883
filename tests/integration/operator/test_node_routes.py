"""The Node projection (CNINodeRoutes) against the real API server: the controller
rewrites it only when a node joins, leaves or changes its pod CIDRs or InternalIPs,
never on a heartbeat, and a new node's pod CIDR reaches every agent's host-gw routes
(and the kernel) through it, with no agent watching every Node."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator import noderoutes
from cni_operator.hostgw import ROUTE_PROTOCOL
from kubernetes.client.exceptions import ApiException

from .conftest import Fleet
from .test_operator import bridge_spec

pytestmark = [
    pytest.mark.cluster("fake-nodes"),
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/host-local").exists(), reason="containernetworking-plugins missing"
    ),
]


def projection(fleet: Fleet) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = fleet.api.get_cluster_custom_object(  # type: ignore[assignment]
            noderoutes.GROUP, noderoutes.VERSION, noderoutes.PLURAL, noderoutes.NAME
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return body


def listed(body: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in ((body or {}).get("spec") or {}).get("nodes") or []}


def generation(body: dict[str, Any]) -> int:
    return int(body["metadata"]["generation"])


@pytest.fixture
def ghost(fleet: Fleet) -> Iterator[str]:
    """A Node no kubelet runs (created and deleted by the test)."""
    name = f"ghost-{fleet.run_id}-{secrets.token_hex(2)}"
    try:
        yield name
    finally:
        fleet.cluster.kubectl("delete", "node", name, "--ignore-not-found", check=False)


def create_node(fleet: Fleet, name: str, cidr: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }
    fleet.cluster.kubectl("create", "-f", "-", input=json.dumps(body))


def set_status(fleet: Fleet, name: str, status: dict[str, Any]) -> None:
    fleet.cluster.kubectl(
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def heartbeat(fleet: Fleet, name: str, beat: int) -> None:
    """What kubelet does every few seconds: a new heartbeat time on a condition."""
    stamp = f"2026-01-01T00:00:{beat:02d}Z"
    condition = {
        "type": "CniwardenTestHeartbeat",
        "status": "True",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "reason": "Beat",
        "message": str(beat),
    }
    set_status(fleet, name, {"conditions": [condition]})


def test_heartbeats_do_not_rewrite_the_projection_changes_do(fleet: Fleet, ghost: str) -> None:
    """Every real change is one write (generation + 1), waited for before the next;
    between them, heartbeats on the fleet's Nodes and on the new Node (and kwok's own,
    all along) write nothing: the generation counts exactly the real changes."""
    first = fleet.wait(
        lambda: (body := projection(fleet)) and set(fleet.nodes) <= set(listed(body)) and body,
        "the controller's first CNINodeRoutes listing the fleet's nodes",
    )
    start = generation(first)
    for beat in range(3):
        for node in fleet.nodes:
            heartbeat(fleet, node, beat)
    create_node(fleet, ghost, "10.250.77.0/24")
    joined = fleet.wait(
        lambda: (body := projection(fleet)) and ghost in listed(body) and body, "the node joined"
    )
    assert listed(joined)[ghost]["podCIDRs"] == ["10.250.77.0/24"]
    assert listed(joined)[ghost]["internalIPs"] == []
    assert generation(joined) == start + 1
    for beat in range(3, 6):
        heartbeat(fleet, ghost, beat)
        heartbeat(fleet, fleet.nodes[0], beat)
    set_status(fleet, ghost, {"addresses": [{"type": "InternalIP", "address": "198.51.100.77"}]})
    addressed = fleet.wait(
        lambda: (
            (body := projection(fleet))
            and listed(body).get(ghost, {}).get("internalIPs") == ["198.51.100.77"]
            and body
        ),
        "the node's InternalIP",
    )
    assert generation(addressed) == start + 2
    for beat in range(6, 9):
        heartbeat(fleet, ghost, beat)
    fleet.cluster.kubectl("delete", "node", ghost)
    gone = fleet.wait(
        lambda: (body := projection(fleet)) and ghost not in listed(body) and body, "the node left"
    )
    assert generation(gone) == start + 3
    assert set(fleet.nodes) <= set(listed(gone))


def sh(*argv: str) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30)
    return out.stdout


def kernel_routes(prefix: str) -> list[tuple[str, str]]:
    out = sh("ip", "-j", "route", "show", "proto", str(ROUTE_PROTOCOL))
    return sorted((r["dst"], r["gateway"]) for r in json.loads(out) if r["dst"] == prefix)


def agent_routes(fleet: Fleet, node: str, prefix: str) -> list[tuple[str, str, str]]:
    routes = (fleet.node_state(node).get("podRoutes") or {}).get("routes") or []
    return [(r["destination"], r["via"], r["node"]) for r in routes if r["destination"] == prefix]


def wait_routes(fleet: Fleet, node: str, cidr: str, want: list[tuple[str, str, str]]) -> None:
    fleet.wait(
        lambda: agent_routes(fleet, node, cidr) == want, f"{node}'s routes to {cidr}: {want}"
    )


@pytest.fixture
def on_link() -> Iterator[str]:
    """A veth pair with a /24 of its own on one end: gateways there are on-link for
    the agents (they run in this machine's network namespace), and routes via it lead
    nowhere. The prefix (three octets) is returned; everything is removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root (an interface and host-gw routes)")
    octet = 100 + secrets.randbelow(150)
    link = f"cwrt{secrets.token_hex(2)}"
    sh("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p")
    try:
        sh("ip", "addr", "add", f"10.251.{octet}.1/24", "dev", link)
        sh("ip", "link", "set", link, "up")
        sh("ip", "link", "set", f"{link}p", "up")
        yield f"10.251.{octet}"
    finally:
        subprocess.run(["ip", "link", "del", link], check=False, timeout=30)


def test_a_new_nodes_pod_cidr_reaches_every_agents_routes(
    fleet: Fleet, ghost: str, on_link: str
) -> None:
    """A routed network on the fleet; a Node joins with a pod CIDR inside its
    clusterCIDRs and an on-link InternalIP: every agent routes it (report and kernel),
    follows its new InternalIP, and removes the route when it leaves."""
    octet = on_link.rsplit(".", 1)[1]
    cidr = f"10.250.{octet}.0/24"
    name = fleet.name("routed")
    spec = bridge_spec(bridge="cwr0")
    spec["routing"] = {"mode": "HostGateway", "clusterCIDRs": ["10.250.0.0/16"]}
    fleet.apply(name, spec)
    fleet.wait(lambda: fleet.ready(name), f"{name} Ready")
    create_node(fleet, ghost, cidr)
    set_status(fleet, ghost, {"addresses": [{"type": "InternalIP", "address": f"{on_link}.9"}]})
    for node in fleet.nodes:
        wait_routes(fleet, node, cidr, [(cidr, f"{on_link}.9", ghost)])
    assert kernel_routes(cidr) == [(cidr, f"{on_link}.9")]
    set_status(fleet, ghost, {"addresses": [{"type": "InternalIP", "address": f"{on_link}.10"}]})
    for node in fleet.nodes:
        wait_routes(fleet, node, cidr, [(cidr, f"{on_link}.10", ghost)])
    fleet.wait(lambda: kernel_routes(cidr) == [(cidr, f"{on_link}.10")], "the kernel route moved")
    fleet.cluster.kubectl("delete", "node", ghost)
    for node in fleet.nodes:
        wait_routes(fleet, node, cidr, [])
    fleet.wait(lambda: kernel_routes(cidr) == [], "the kernel route removed")
    fleet.delete(name)
