"""When a real node counts as up: its Node object registered with a podCIDR,
and its runtime ready (the network too, when asked).

Separate because the answer comes from the API server, not from the node's
processes, and both the bring-up and the tooling's bridge network wait on it.
"""

from __future__ import annotations

import json

from . import procs
from .kube import Kubectl, ready_condition
from .kubelet import READY_TIMEOUT
from .layout import NodeLayout
from .state import ClusterState


def node_status(kubectl: Kubectl, name: str) -> dict[str, object] | None:
    out = kubectl("get", "node", name, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    status: dict[str, object] = json.loads(out.stdout)
    return status


def wait_node_registered(
    state: ClusterState, kubectl: Kubectl, node: NodeLayout, *, need_ready: bool
) -> str:
    """Wait until the Node exists with a podCIDR and its runtime is up; returns the podCIDR.

    Without a CNI config the kubelet reports only the network as not ready (the
    operator under test provides it): that counts as up unless `need_ready`.
    """
    kubelet = next(p for p in state.processes if p.name == "kubelet" and p.node == node.name)
    pod_cidr = ""

    def registered() -> bool:
        nonlocal pod_cidr
        obj = node_status(kubectl, node.name)
        if obj is None:
            return False
        spec = obj.get("spec")
        pod_cidr = str(spec.get("podCIDR", "")) if isinstance(spec, dict) else ""
        cond = ready_condition(obj)
        if not pod_cidr or not cond:
            return False
        if cond.get("status") == "True":
            return True
        return not need_ready and "NetworkReady=false" in cond.get("message", "")

    procs.wait_ready(
        kubelet,
        registered,
        timeout=READY_TIMEOUT,
        what=f"node {node.name} registered with a podCIDR" + (" and Ready" if need_ready else ""),
    )
    return pod_cidr
