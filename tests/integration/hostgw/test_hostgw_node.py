"""Host-gw against a real kernel: routes and the masquerade table in a node namespace.

Two namespaces stand for two nodes on one L2 segment (a veth pair). The agent's
host-gw side runs inside node A (as it does on a node: in the host network),
driven by a manifest like the agent's and by Node objects, exactly as the agent
feeds it: the peers through the controller's `CNINodeRoutes` projection (built from
the Nodes and read back as the agent reads it), its own Node directly. Traffic only
flows between the test's own namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator import hostgw
from cni_operator.hostgw_node import ROUTE_REFUSED
from cni_operator.kube import Kube
from cni_operator.node import manifest as manifest_io
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.paths import HostPaths

from devtools.localcluster.cluster import LocalCluster

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]
ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ["10.244.0.0/16"]  # the network's routing.clusterCIDRs

DRIVER = """
import dataclasses, json, sys
from pathlib import Path
from cni_operator import noderoutes
from cni_operator.hostgw import PeerNode
from cni_operator.hostgw_node import HostGatewayNode
from cni_operator.node import manifest as manifest_io
from cni_operator.node.paths import HostPaths
args = json.loads(sys.argv[1])
journal = HostPaths(Path(args["root"])).state_dir / "hostgw-displaced.json"
node = HostGatewayNode(args["me"], journal)  # as the agent builds it
for body in args["nodes"]:
    if body["metadata"]["name"] == args["me"]:
        node.set_own(body)  # the agent's own Node watch
if args["projection"]:  # what the controller publishes, as the agent reads it back
    peers = [PeerNode.from_node(b) for b in args["nodes"]]
    published = json.loads(json.dumps(noderoutes.body_of(peers)))
    node.set_peers(noderoutes.peers_of(published))
# What the agent's reconcile pass hands over: the specs applied on this node.
applied = manifest_io.load(HostPaths(Path(args["root"]))).networks
passes = []
for _ in range(args["passes"]):
    report = node.sync({name: m.spec for name, m in applied.items()})
    events = [dataclasses.asdict(e) for e in node.take_events()]
    passes.append({"report": report, "events": events})
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")
print(json.dumps({"passes": passes, "pyroute2": loaded}))
"""


def sh(*argv: str, check: bool = True) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


class TwoNodes:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.a, self.b = f"hgwa-{tag}", f"hgwb-{tag}"
        self.root = tmp / "node-a"
        self.paths = HostPaths(self.root)
        self.paths.ensure()
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"

    def up(self) -> None:
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh(
            "ip",
            "-n",
            self.a,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            self.b,
        )
        for ns, host in ((self.a, 10), (self.b, 11)):
            sh("ip", "-n", ns, "addr", "add", f"{self.subnet}.{host}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Node B's "pod": an address of B's podCIDR on B's loopback.
        sh("ip", "-n", self.b, "addr", "add", "10.244.1.7/32", "dev", "lo")

    def down(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)

    def node(self, name: str, ip: str, cidr: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "uid": f"uid-{name}"},
            "spec": {"podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }

    def nodes(self, b_ip: str | None = None, extra: bool = True) -> list[dict[str, Any]]:
        out = [
            self.node("a", f"{self.subnet}.10", "10.244.0.0/24"),
            self.node("b", b_ip or f"{self.subnet}.11", "10.244.1.0/24"),
        ]
        if extra:
            out.append(self.node("c", f"{self.subnet}.12", "10.244.2.0/24"))
        return out

    def manifest(self, routing: dict[str, Any] | None) -> None:
        spec: dict[str, Any] = {
            "priority": 10,
            "plugins": [
                {
                    "type": "cniwarden-bridge",
                    "ipam": {
                        "type": "cniwarden-host-local",
                        "ranges": [[{"subnet": "usePodCIDR"}]],
                    },
                }
            ],
        }
        manifest = Manifest()
        if routing is not None:
            spec["routing"] = routing
            manifest.networks["pods"] = ManagedNetwork("10-pods.conflist", "0" * 64, 1, spec)
        manifest_io.save(self.paths, manifest)

    def sync(self, nodes: list[dict[str, Any]], projection: bool = True) -> dict[str, Any] | None:
        report: dict[str, Any] | None = self.passes(nodes, 1, projection)[0]["report"]
        return report

    def passes(
        self, nodes: list[dict[str, Any]], count: int, projection: bool = True
    ) -> list[dict[str, Any]]:
        """`count` agent passes in one process: each one's report and the Events it made.
        Without `projection`, a fresh agent before the controller has published."""
        args = json.dumps(
            {
                "root": str(self.root),
                "me": "a",
                "nodes": nodes,
                "passes": count,
                "projection": projection,
            }
        )
        out = sh(
            "nsenter",
            f"--net=/run/netns/{self.a}",
            sys.executable,
            "-c",
            DRIVER,
            args,
        )
        answer = json.loads(out.strip().splitlines()[-1])
        # One kernel toolkit: the agent's host-gw never loads pyroute2 (~24 MiB of RSS).
        assert answer["pyroute2"] == [], answer["pyroute2"]
        passes: list[dict[str, Any]] = answer["passes"]
        return passes

    def routes(self) -> list[tuple[str, str]]:
        listing = json.loads(
            sh("ip", "-n", self.a, "-j", "route", "show", "proto", str(hostgw.ROUTE_PROTOCOL))
        )
        return sorted((r["dst"], r["gateway"]) for r in listing)

    def nft_table(self) -> str:
        return sh(
            "ip",
            "netns",
            "exec",
            self.a,
            "nft",
            "list",
            "table",
            "inet",
            hostgw.NFT_TABLE,
            check=False,
        )


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[TwoNodes]:
    pair = TwoNodes(tmp_path)
    try:
        pair.up()
        yield pair
    finally:
        pair.down()


def test_routes_follow_the_nodes_and_go_with_the_network(nodes: TwoNodes) -> None:
    nodes.manifest({"mode": "HostGateway", "ipMasq": True, "clusterCIDRs": CLUSTER})
    report = nodes.sync(nodes.nodes())
    assert report is not None and report["applied"], report
    s = nodes.subnet
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.11"), ("10.244.2.0/24", f"{s}.12")]
    # The route carries traffic: node A reaches the pod address on node B.
    sh("ip", "-n", nodes.b, "route", "add", "10.244.0.0/24", "via", f"{s}.10")
    sh("ip", "netns", "exec", nodes.a, "ping", "-c", "1", "-W", "2", "10.244.1.7")
    table = nodes.nft_table()
    assert "masquerade" in table and "10.244.0.0/24" in table, table
    assert report["masquerade"]["from"] == ["10.244.0.0/24"]

    # Node c leaves, node b changes its address: routes follow, nothing else is touched.
    sh("ip", "-n", nodes.a, "route", "add", "10.99.0.0/24", "via", f"{s}.11")  # not ours
    report = nodes.sync(nodes.nodes(b_ip=f"{s}.21", extra=False))
    assert report is not None
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.21")]
    others = sh("ip", "-n", nodes.a, "route", "show", "10.99.0.0/24")
    assert f"via {s}.11" in others

    # Masquerade off: the table goes, the routes stay.
    nodes.manifest({"mode": "HostGateway", "ipMasq": False, "clusterCIDRs": CLUSTER})
    nodes.sync(nodes.nodes())
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.11"), ("10.244.2.0/24", f"{s}.12")]
    assert "masquerade" not in nodes.nft_table()

    # The network is deleted (no routed network in the manifest): everything of ours goes.
    nodes.manifest(None)
    assert nodes.sync(nodes.nodes()) is None
    assert nodes.routes() == []
    assert "masquerade" not in nodes.nft_table()
    assert "10.99.0.0/24" in sh("ip", "-n", nodes.a, "route", "show")


def test_a_route_ours_overwrote_is_put_back_when_the_network_leaves(nodes: TwoNodes) -> None:
    """The node routed B's pods before us (a static route, as the old CNI or an operator
    left it, via another gateway, on a named link): ours overwrites it while the network
    is here, and it is back exactly (gateway, link, proto) once the network has gone,
    across agent restarts (each sync is a fresh agent process)."""
    s = nodes.subnet
    sh("ip", "-n", nodes.a, "route", "add", "10.244.1.0/24", "via", f"{s}.99", "dev", "eth0")
    before = sh("ip", "-n", nodes.a, "-d", "route", "show", "10.244.1.0/24")
    assert "proto boot" in before, before
    nodes.manifest({"mode": "HostGateway", "clusterCIDRs": CLUSTER})
    report = nodes.sync(nodes.nodes(extra=False))
    assert report is not None and report["applied"], report
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.11")]
    assert len(sh("ip", "-n", nodes.a, "route", "show", "10.244.1.0/24").splitlines()) == 1
    journal = json.loads((nodes.paths.state_dir / "hostgw-displaced.json").read_text())
    assert [(r["destination"], r["gateway"], r["protocol"]) for r in journal["routes"]] == [
        ("10.244.1.0/24", f"{s}.99", 3)
    ]
    # B moves: ours follows it; the journal still holds the route from before us.
    nodes.sync(nodes.nodes(b_ip=f"{s}.21", extra=False))
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.21")]

    nodes.manifest(None)
    assert nodes.sync(nodes.nodes(extra=False)) is None
    assert nodes.routes() == []
    assert sh("ip", "-n", nodes.a, "-d", "route", "show", "10.244.1.0/24") == before
    # Nothing displaced any more: no journal left (an uninstall removes the state dir).
    assert not (nodes.paths.state_dir / "hostgw-displaced.json").exists()


def test_an_unreadable_journal_is_reported_and_routes_still_follow(nodes: TwoNodes) -> None:
    s = nodes.subnet
    nodes.paths.state_dir.mkdir(parents=True, exist_ok=True)
    (nodes.paths.state_dir / "hostgw-displaced.json").write_text('{"version": 1, "rout')
    nodes.manifest({"mode": "HostGateway", "clusterCIDRs": CLUSTER})
    report = nodes.sync(nodes.nodes(extra=False))
    assert report is not None and report["applied"] is False
    assert "journal of displaced routes" in report["error"] and "not JSON" in report["error"]
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.11")]
    assert (nodes.paths.state_dir / "hostgw-displaced.json").read_text() == '{"version": 1, "rout'


def test_a_fresh_agent_removes_routes_left_by_a_previous_one(nodes: TwoNodes) -> None:
    s = nodes.subnet
    sh(
        "ip",
        "-n",
        nodes.a,
        "route",
        "add",
        "10.244.9.0/24",
        "via",
        f"{s}.11",
        "proto",
        str(hostgw.ROUTE_PROTOCOL),
    )
    nodes.manifest(None)
    assert nodes.sync(nodes.nodes()) is None
    assert nodes.routes() == []


def test_before_the_projection_a_fresh_agent_keeps_the_routes_and_the_masquerade(
    nodes: TwoNodes,
) -> None:
    """An upgrade: the agent restarts before the controller has published CNINodeRoutes.
    Its peers are unknown, not absent: the routes and the masquerade table a previous
    agent installed stay (no gap in pod traffic) until the projection arrives."""
    s = nodes.subnet
    nodes.manifest({"mode": "HostGateway", "ipMasq": True, "clusterCIDRs": CLUSTER})
    assert nodes.sync(nodes.nodes()) is not None
    before = nodes.routes()
    assert before == [("10.244.1.0/24", f"{s}.11"), ("10.244.2.0/24", f"{s}.12")]
    table = nodes.nft_table()
    assert "masquerade" in table
    report = nodes.sync(nodes.nodes(), projection=False)
    assert report is not None and report["applied"] is False
    assert report["skipped"] == [
        "waiting for the controller's CNINodeRoutes (the other nodes' pod CIDRs): "
        "routes and masquerade left as they are"
    ]
    assert nodes.routes() == before
    assert nodes.nft_table() == table
    # Once published, it converges as before: c has left, b moved.
    nodes.sync(nodes.nodes(b_ip=f"{s}.21", extra=False))
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.21")]


def test_unreachable_peers_are_reported_not_routed(nodes: TwoNodes) -> None:
    nodes.manifest({"mode": "HostGateway", "clusterCIDRs": CLUSTER})
    far = nodes.node("far", "192.0.2.9", "10.244.5.0/24")
    report = nodes.sync([*nodes.nodes(extra=False), far])
    assert report is not None and report["applied"]
    assert nodes.routes() == [("10.244.1.0/24", f"{nodes.subnet}.11")]
    assert any(
        "far: InternalIP 192.0.2.9 is not on a directly connected" in s for s in report["skipped"]
    )


def test_claims_a_node_may_not_make_are_refused_reported_and_evented(nodes: TwoNodes) -> None:
    """The review's three claims, all with a reachable InternalIP: 128.0.0.0/1, the node
    network itself, and half of another node's range. None becomes a route; each is in the
    report and one Event names the claiming Node (and the Node it collides with)."""
    s = nodes.subnet
    nodes.manifest({"mode": "HostGateway", "clusterCIDRs": ["10.0.0.0/8"]})
    claims = [
        *nodes.nodes(),  # a (us), b 10.244.1.0/24, c 10.244.2.0/24
        nodes.node("wide", f"{s}.66", "128.0.0.0/1"),
        nodes.node("lan", f"{s}.67", f"{s}.0/25"),  # the nodes' own subnet
        nodes.node("half", f"{s}.68", "10.244.2.128/25"),  # half of c's range
    ]
    first, second = nodes.passes(claims, 2)
    report = first["report"]
    assert report is not None and report["applied"], report
    assert nodes.routes() == [("10.244.1.0/24", f"{s}.11")]
    assert sh("ip", "-n", nodes.a, "route", "show", "128.0.0.0/1") == ""
    refused = {(r["node"], r["podCIDR"]): r["reason"] for r in report["refused"]}
    assert refused == {
        ("wide", "128.0.0.0/1"): "podCIDR 128.0.0.0/1 is outside the network's "
        "routing.clusterCIDRs (10.0.0.0/8)",
        ("lan", f"{s}.0/25"): f"podCIDR {s}.0/25 overlaps {s}.0/24, "
        "a directly connected subnet of this node",
        ("c", "10.244.2.0/24"): "podCIDR 10.244.2.0/24 overlaps node half's podCIDR "
        "10.244.2.128/25",
        ("half", "10.244.2.128/25"): "podCIDR 10.244.2.128/25 overlaps node c's podCIDR "
        "10.244.2.0/24",
    }
    events = {e["involved"]["metadata"]["name"]: e for e in first["events"]}
    assert set(events) == {"wide", "lan", "c", "half"}
    for name, event in events.items():
        assert event["involved"] == {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "uid": f"uid-{name}"},
        }
        assert event["reason"] == "HostGatewayRouteRefused"
        assert event["message"].startswith("host-gw on node a does not route ")
        assert f"to node {name}: " in event["message"]
    # The next pass reports the same refusals but posts no Event again.
    assert second["report"]["refused"] == report["refused"]
    assert second["events"] == []


@pytest.mark.cluster("control-plane")
def test_a_refusal_event_is_about_the_node_and_kubectl_shows_it(
    nodes: TwoNodes, cluster: LocalCluster
) -> None:
    """The Event a refused claim gives, posted as the agent posts it, to a real API server:
    it lands on the Node object (its uid), where `kubectl describe node` shows it."""
    s = nodes.subnet
    name = f"hgw-wide-{secrets.token_hex(3)}"
    claim = nodes.node(name, f"{s}.66", "128.0.0.0/1")
    created = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": claim["spec"],
    }
    cluster.kubectl("create", "-f", "-", input=json.dumps(created))
    try:
        status = json.dumps({"status": claim["status"]})
        cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", status)
        stored = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
        nodes.manifest({"mode": "HostGateway", "clusterCIDRs": CLUSTER})
        (only,) = nodes.passes([*nodes.nodes(extra=False), stored], 1)
        assert nodes.routes() == [("10.244.1.0/24", f"{s}.11")]
        (event,) = only["events"]
        assert event["involved"]["metadata"] == {"name": name, "uid": stored["metadata"]["uid"]}
        Kube(str(cluster.kubeconfig)).post_event(
            event["involved"], "Warning", event["reason"], event["message"], "cniwarden-agent"
        )
        selector = f"involvedObject.kind=Node,involvedObject.name={name}"
        listed = cluster.kubectl(
            "get", "events", "-A", "--field-selector", selector, "-o", "json"
        ).stdout
        ours = [e for e in json.loads(listed)["items"] if e["reason"] == ROUTE_REFUSED]
        assert [(e["type"], e["involvedObject"]["uid"]) for e in ours] == [
            ("Warning", stored["metadata"]["uid"])
        ]
        described = cluster.kubectl("describe", "node", name).stdout
        assert ROUTE_REFUSED in described
        assert "128.0.0.0/1 is outside the network's routing.clusterCIDRs" in described
    finally:
        cluster.kubectl("delete", "node", name, "--ignore-not-found", check=False)
