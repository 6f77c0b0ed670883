"""One local cluster, two node pairs: the reference plugins on one, cniwarden on the other.

The side-by-side benches on real nodes (bench/pod_rtt.py, bench/pod_churn.py) share
this set-up so that both compare the same two things: four real nodes (containerd +
kubelet, each in its own network and mount namespace, all on one L2 segment), of
which one pair runs containernetworking-plugins' bridge + host-local over each
node's podCIDR (host-gw routes between them added by hand, as a routed reference
cluster would have them), and the other pair runs cniwarden as `helm install` sets
it up (the example CNINetwork through the shim and the cni-server, routes from the
agents' host-gw). Every node gets the same-sized podCIDR from the controller manager.
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.localcluster import LocalCluster
from devtools.localcluster.cluster import up
from devtools.localcluster.layout import POD_CIDR
from devtools.localcluster.tiers import Tier
from devtools.ship.install import ChartInstall, LocalNode, build_and_load, run, wait_for

ROOT = Path(__file__).resolve().parents[1]
BENCH_LABEL = "cniwarden.io/bench"


@dataclass
class TwoPairs:
    """The running cluster: which nodes are on which CNI, and the chart's release."""

    cluster: LocalCluster
    reference: list[LocalNode]
    cniwarden: list[LocalNode]
    product: ChartInstall


def reference_network(cluster: LocalCluster, nodes: list[LocalNode]) -> None:
    """containernetworking-plugins' bridge + host-local on `nodes`, routed like host-gw."""
    cidrs = {n.name: cni_cidr(cluster, n.name) for n in nodes}
    for node in nodes:
        conflist = {
            "cniVersion": "1.0.0",
            "name": "reference",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "refbr0",
                    "isGateway": True,
                    "mtu": 1500,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": cidrs[node.name]}]],
                        "routes": [{"dst": POD_CIDR}, {"dst": str(cluster.layout.node_subnet)}],
                    },
                }
            ],
        }
        node.write("/etc/cni/net.d/10-reference.conflist", json.dumps(conflist).encode())
        for other in nodes:
            if other.name != node.name:
                node.sh(f"ip route replace {cidrs[other.name]} via {other.ip}")


def cni_cidr(cluster: LocalCluster, node: str) -> str:
    return cluster.kubectl("get", "node", node, "-o", "jsonpath={.spec.podCIDR}").stdout.strip()


def node_ready(cluster: LocalCluster, name: str) -> bool:
    node = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


@contextlib.contextmanager
def two_pairs(prefix: str, log: Callable[[str], None], *, swap: bool = False) -> Iterator[TwoPairs]:
    """A 4-real-node cluster, nodes 0-1 on the reference plugins and 2-3 on cniwarden
    (`swap`: the other way round), every node Ready; torn down on exit, whatever
    happened (the release first, then the whole cluster)."""
    if not (ROOT / "build/cni-bin/cniwarden-bridge").exists():
        run(["make", "-C", str(ROOT), "plugins"])
    name = f"{prefix}-{secrets.token_hex(2)}"
    log(f"starting local cluster {name} with 4 real nodes")
    cluster = up(name, Tier.REAL_NODE, fake_nodes=0, real_nodes=4)
    product: ChartInstall | None = None
    nodes = [LocalNode.of(cluster, n.name) for n in cluster.real_nodes]
    reference, ours = (nodes[2:], nodes[:2]) if swap else (nodes[:2], nodes[2:])
    try:
        reference_network(cluster, reference)
        for node in ours:
            cluster.kubectl("label", "node", node.name, f"{BENCH_LABEL}=cniwarden")
        build_and_load(cluster)
        product = ChartInstall(cluster, cluster.workdir / "cniwarden", ours)
        values = product.local_values({BENCH_LABEL: "cniwarden"})
        values["exampleNetwork"]["ipMasq"] = False  # the reference side has none either
        product.install(values)
        for node in nodes:
            wait_for(functools.partial(node_ready, cluster, node.name), f"{node.name} Ready", 120)
        yield TwoPairs(cluster, reference, ours, product)
    finally:
        if product is not None:
            product.close()
        cluster.down()
