"""The Helm chart as test data: `helm template` with the pinned helm, parsed."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from devtools.localcluster.toolpaths import tool

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cniwarden"


def helm(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("helm")), *args],
        capture_output=True,
        text=True,
        check=check,
        env=dict(env) if env is not None else None,
        timeout=300,
    )


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json` arguments for nested values: {"agent": {"healthPort": 1}}."""
    args = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


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
