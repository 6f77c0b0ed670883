"""The Helm chart as test data: `helm template` with the pinned helm, parsed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from devtools.localcluster.toolpaths import REPO_ROOT as ROOT
from devtools.ship.helm import CHART, helm, set_args

__all__ = ["CHART", "ROOT", "container", "find", "helm", "render", "set_args"]


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "cniwarden",
    namespace: str = "cniwarden-system",
    hooks: bool = True,
) -> list[dict[str, Any]]:
    """Every object `helm template` renders (CRDs from crds/ excluded), parsed."""
    out = helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        *([] if hooks else ["--no-hooks"]),
        *set_args(values or {}),
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {len(matches)}"
    return matches[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name} in {workload['metadata']['name']}")
