"""The pinned helm and the chart."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devtools.localcluster.toolpaths import REPO_ROOT, tool

CHART = REPO_ROOT / "charts" / "cniwarden"


def helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the pinned helm; a failure raises with helm's own message."""
    argv = [str(tool("helm")), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out


def install_chart(
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    *flags: str,
    kubeconfig: Path,
    chart: Path = CHART,
) -> subprocess.CompletedProcess[str]:
    """`helm install` of our chart (or another version of it, `chart`) into
    `namespace` (created if missing), `values` as `--set-json`; `flags` are more
    helm options (e.g. --wait)."""
    return helm(
        "install",
        release,
        str(chart),
        "--namespace",
        namespace,
        "--create-namespace",
        *flags,
        *set_args(values),
        kubeconfig=kubeconfig,
    )


def wait_for_agents(release: str, namespace: str, *, kubeconfig: Path, timeout: str) -> None:
    """Wait until every agent pod of `release` is updated and Ready.

    `helm --wait` counts a DaemonSet ready once numberReady >= desired - maxUnavailable:
    with the chart's maxUnavailable 1 it returns while one node's agent is still
    Pending, and the first test to use that node then races it."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=agent"
    argv = [
        str(tool("kubectl")),
        f"--kubeconfig={kubeconfig}",
        "rollout",
        "status",
        "daemonset",
        "-n",
        namespace,
        "-l",
        selector,
        f"--timeout={timeout}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(
            f"agent DaemonSet of {release} not ready within {timeout}:\n{out.stdout}{out.stderr}"
        )


def uninstall_release(
    release: str, namespace: str, *flags: str, kubeconfig: Path
) -> subprocess.CompletedProcess[str]:
    """`helm uninstall` of `release` from `namespace`; `flags` as for `install_chart`."""
    return helm("uninstall", release, "-n", namespace, *flags, kubeconfig=kubeconfig)


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json` arguments for nested values: {"agent": {"healthPort": 1}}."""
    args = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args
