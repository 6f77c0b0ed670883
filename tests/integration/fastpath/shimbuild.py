"""Builds the shim once per test session (`make plugins`) and says where it is."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CNI_BIN = ROOT / "build" / "cni-bin"
SHIM_NAMES = ("cniwarden-bridge", "cniwarden-host-local")


def built_shim_dir() -> Path:
    """`make plugins` is a no-op when the binaries are current, so always run it."""
    subprocess.run(["make", "-s", "plugins"], cwd=ROOT, check=True, capture_output=True)
    return CNI_BIN
