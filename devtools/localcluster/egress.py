"""The API server's way into the cluster network: an HTTP CONNECT proxy.

The local cluster's API server runs in the machine's root network namespace,
which has no route to pod IPs (and cannot be given one: every local cluster
uses the same pod CIDR, so host routes would collide between clusters running
at once). A real control plane in that position uses Konnectivity: the API
server's `EgressSelectorConfiguration` sends its "cluster" traffic (to nodes,
pods and Services: kubelet logs/exec/port-forward, the pods/services/nodes
proxy) through an HTTP CONNECT proxy that sits where the cluster network is.

Here that proxy listens on a unix socket in the cluster's directory (the API
server dials it from the root namespace, as the "uds" transport allows) and
runs inside the first real node's network namespace, whose routes are the
cluster's: its own pods, the other nodes' pod CIDRs (the CNI's routes) and
ClusterIPs (kube-proxy). It is recorded like every daemon, stopped on `down`,
and lives in the node's namespace, so a node teardown ends it too.

The proxy itself is `egressproxy`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from . import procs
from .layout import Layout, NodeLayout
from .state import ClusterState

READY_TIMEOUT_S = 30.0


def egress_config(socket: Path) -> dict[str, object]:
    """The API server's EgressSelectorConfiguration: "cluster" traffic via the proxy."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(socket)}},
                },
            }
        ],
    }


def write_egress_config(layout: Layout) -> Path:
    path = layout.workdir / "egress-selector.yaml"
    path.write_text(yaml.safe_dump(egress_config(layout.egress_socket), sort_keys=False))
    return path


def start_proxy(layout: Layout, state: ClusterState, node: NodeLayout) -> None:
    """The proxy in `node`'s network namespace, serving once its socket answers."""
    sock = layout.egress_socket
    sock.unlink(missing_ok=True)
    rec = procs.start(
        "egress-proxy",
        [sys.executable, "-m", "devtools.localcluster.egressproxy", f"--socket={sock}"],
        layout.logs_dir / "egress-proxy.log",
        netns=node.netns_path,
        cwd=Path(__file__).resolve().parents[2],
        node=node.name,
    )
    state.processes.append(rec)
    state.save()
    procs.wait_ready(rec, sock.is_socket, timeout=READY_TIMEOUT_S, what=f"socket {sock}")
