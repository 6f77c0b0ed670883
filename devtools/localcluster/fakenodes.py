"""The fake-nodes tier: kwok keeps annotated Node objects Ready and runs their pods.

kwok only manages Nodes carrying its annotation, so fake nodes share the cluster
with real ones. The controller manager gives each Node a `spec.podCIDR` (as on
kind), and kwok hands out pod IPs from it. Fake nodes are not tainted: the
operator's DaemonSet lands on them as it would on a real cluster; tests that
must run on a real node pin `spec.nodeName`.
"""

from __future__ import annotations

import json
import time

import yaml

from . import kubeconfig, procs
from .kube import Kubectl, node_is_ready
from .layout import Layout
from .state import ClusterState

READY_TIMEOUT = 120.0
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_LABEL = "node.cniwarden.dev/fake"


def start_kwok(layout: Layout, state: ClusterState, kwok_bin: str) -> float:
    port = layout.ports.kwok
    rec = procs.start(
        "kwok",
        [
            kwok_bin,
            f"--kubeconfig={layout.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{port}",
            "--node-lease-duration-seconds=40",
        ],
        layout.logs_dir / "kwok.log",
    )
    state.processes.append(rec)
    state.save()

    def healthy() -> bool:
        with_status = kubeconfig.http_get_text(f"http://127.0.0.1:{port}/healthz")
        return with_status.strip() == "ok"

    return procs.wait_ready(rec, healthy, timeout=READY_TIMEOUT, what="kwok /healthz")


def node_manifest(name: str) -> dict[str, object]:
    """A Node kwok will manage: same shape as kwok's own examples, without the taint."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
                FAKE_NODE_LABEL: "true",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def add_fake_nodes(layout: Layout, state: ClusterState, kubectl: Kubectl, count: int) -> list[str]:
    """Create `count` more fake nodes and wait until each is Ready with a podCIDR."""
    first = len(state.fake_nodes)
    names = [layout.fake_node_name(i) for i in range(first, first + count)]
    if not names:
        return []
    state.fake_nodes.extend(names)
    state.save()
    docs = "\n---\n".join(yaml.safe_dump(node_manifest(n)) for n in names)
    kubectl("apply", "-f", "-", input=docs)
    wait_nodes_ready(state, kubectl, names)
    return names


def wait_nodes_ready(
    state: ClusterState, kubectl: Kubectl, names: list[str], timeout: float = READY_TIMEOUT
) -> None:
    kwok = next(p for p in state.processes if p.name == "kwok")
    pending = set(names)

    def all_ready() -> bool:
        out = kubectl("get", "nodes", "-o", "json")
        for node in json.loads(out.stdout)["items"]:
            name = node["metadata"]["name"]
            if name in pending and node_is_ready(node) and node["spec"].get("podCIDR"):
                pending.discard(name)
        return not pending

    started = time.monotonic()
    procs.wait_ready(
        kwok, all_ready, timeout=timeout, what=f"fake nodes Ready with a podCIDR: {sorted(pending)}"
    )
    state.timings.setdefault("fake_nodes_ready_s", round(time.monotonic() - started, 2))
