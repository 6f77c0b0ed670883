"""Small shared views of Kubernetes objects for the cluster tooling and its tests."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping

# `LocalCluster.kubectl` and the bound kubectl the bring-up steps are handed.
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


def ready_condition(node: Mapping[str, object]) -> dict[str, str]:
    """The Node's Ready condition ({} while it reports none)."""
    status = node.get("status")
    conditions = status.get("conditions", []) if isinstance(status, dict) else []
    for cond in conditions or []:
        if cond.get("type") == "Ready":
            return {k: str(v) for k, v in cond.items()}
    return {}


def node_is_ready(node: Mapping[str, object]) -> bool:
    """A Node object (`kubectl get node -o json`) whose Ready condition is True."""
    return ready_condition(node).get("status") == "True"


def node_ready(kubectl: Kubectl, name: str) -> bool:
    """Whether Node `name` is Ready now, asked through `kubectl`."""
    node: dict[str, object] = json.loads(kubectl("get", "node", name, "-o", "json").stdout)
    return node_is_ready(node)
