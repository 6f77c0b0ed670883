"""Pod manifests for the local cluster: busybox from the node's own image store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .layout import BUSYBOX_IMAGE


def busybox_pod(
    name: str,
    node: str,
    command: Sequence[str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    grace_seconds: int | None = None,
    host_network: bool = False,
    image: str = BUSYBOX_IMAGE,
    pull_policy: str = "Never",
) -> dict[str, Any]:
    """A one-container busybox Pod bound to `node` (no scheduler involved) in `default`.
    By default the image is never pulled: the tooling imports it into every node
    (a kind cluster passes its own `image` and `pull_policy`)."""
    metadata: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels:
        metadata["labels"] = dict(labels)
    container: dict[str, Any] = {"name": "c", "image": image, "imagePullPolicy": pull_policy}
    if command is not None:
        container["command"] = list(command)
    spec: dict[str, Any] = {"nodeName": node}
    if host_network:
        spec["hostNetwork"] = True
    if grace_seconds is not None:
        spec["terminationGracePeriodSeconds"] = grace_seconds
    spec["containers"] = [container]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
