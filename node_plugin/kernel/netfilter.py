"""Run iptables/nft as subprocesses (as the reference does via go-iptables and knftables)."""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

from node_plugin.cni.errors import INTERNAL, CniError

log = logging.getLogger(__name__)
TIMEOUT = 60


def run(
    argv: list[str], stdin: str | None = None, *, what: str
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise CniError(INTERNAL, f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise CniError(INTERNAL, f"{what}: {argv[0]} did not finish in {TIMEOUT}s") from None


def check(proc: subprocess.CompletedProcess[str], what: str, script: str | None = None) -> str:
    if proc.returncode != 0:
        log.debug("%s failed; input was:\n%s", what, script)
        raise CniError(INTERNAL, f"{what} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def nft_json(args: list[str], what: str) -> dict[str, Any] | None:
    """`nft -j list ...` parsed; None when the table or chain does not exist."""
    proc = run(["nft", "-j", *args], what=what)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr or "does not exist" in proc.stderr:
            return None
        raise CniError(INTERNAL, f"{what} failed: {proc.stderr.strip()}")
    parsed = json.loads(proc.stdout or "{}")
    return parsed if isinstance(parsed, dict) else None


def nft_apply(script: str, what: str) -> None:
    check(run(["nft", "-f", "-"], script, what=what), what, script)
