"""Where the pinned tools live (built by `make tools`, see tools/build-tools.sh)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def tools_bin() -> Path:
    return Path(os.environ.get("CNIWARDEN_TOOLS_BIN", REPO_ROOT / ".tools" / "bin"))


class MissingToolError(RuntimeError):
    pass


def tool(name: str) -> Path:
    """A pinned tool from .tools/bin, or a system one for Debian-packaged binaries."""
    pinned = tools_bin() / name
    if pinned.exists():
        return pinned
    raise MissingToolError(f"{pinned} is missing: run `make tools` (builds the pinned tools)")


def system_tool(name: str) -> Path:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise MissingToolError(
            f"{name} is not installed: run `make debs` (installs the Debian packages)"
        )
    return Path(found)


PINNED_TOOLS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
    "etcd",
    "kwok",
)
