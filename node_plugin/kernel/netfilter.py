"""nftables and iptables for the node: the plugins' ipMasq and macspoofchk rules and the
agent's host-gw masquerade table.

Through the nft/iptables CLIs as subprocesses, as the reference does via go-iptables and
knftables: the tools own the rule formats, one `nft -f` script is one kernel transaction,
and pyroute2's nftables support is not stable. Every failure becomes a CniError that
says what was being done and what the tool answered.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from node_plugin.cni.errors import INTERNAL, CniError

log = logging.getLogger(__name__)
TIMEOUT = 60
# Where Debian puts the tools, for a caller whose PATH lacks the sbin directories.
_SBIN = "/usr/sbin:/sbin"


def binary(tool: str) -> str | None:
    """The tool's path, or None when it is not installed."""
    return shutil.which(tool) or shutil.which(tool, path=_SBIN)


def available(tool: str) -> bool:
    return binary(tool) is not None


def run(
    argv: list[str], stdin: str | None = None, *, what: str
) -> subprocess.CompletedProcess[str]:
    path = binary(argv[0])
    if path is None:
        raise CniError(INTERNAL, f"{what}: {argv[0]} is not installed")
    try:
        return subprocess.run(
            [path, *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except OSError as exc:
        raise CniError(INTERNAL, f"{what}: cannot run {path}: {exc.strerror or exc}") from None
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
    """One `nft -f -` transaction: all of `script` or nothing."""
    check(run(["nft", "-f", "-"], script, what=what), what, script)
