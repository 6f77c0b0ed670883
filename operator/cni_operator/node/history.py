"""What this node ran: the last N configs the agent applied per network.

`<state dir>/history/<network>.json` holds, newest last, each applied config with
its generation, time, sha256 and the kernel release at the time, rewritten
atomically and pruned to `limit` entries. The newest entry is the node's "last good"
config: the doctor diffs the file on disk against it, compares the running kernel
with the one it was applied on, and `cniwarden doctor --restore-last-good` writes
it back without the API server (a node cut off from the cluster).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cni_operator.node.atomic import atomic_write, sha256_bytes
from cni_operator.node.paths import HostPaths

HISTORY_LIMIT = 10
HISTORY_DIR = "history"


@dataclass(frozen=True)
class Applied:
    generation: int
    time: str
    sha256: str
    file: str
    kernel: str
    content: str  # the conflist as written (UTF-8 JSON)


def history_dir(paths: HostPaths) -> Path:
    return paths.state_dir / HISTORY_DIR


def _path(paths: HostPaths, network: str) -> Path:
    return history_dir(paths) / f"{network}.json"


def read_history(paths: HostPaths, network: str) -> list[Applied]:
    """Oldest first; an unreadable file reads as no history (never as an error that
    would stop a pass): the next apply starts it again."""
    try:
        raw = json.loads(_path(paths, network).read_bytes())
        return [Applied(**entry) for entry in raw.get("applied", [])]
    except (OSError, ValueError, TypeError):
        return []


def networks_with_history(paths: HostPaths) -> list[str]:
    try:
        return sorted(p.stem for p in history_dir(paths).glob("*.json"))
    except OSError:
        return []


def record_applied(
    paths: HostPaths,
    network: str,
    file: str,
    content: bytes,
    generation: int,
    *,
    limit: int = HISTORY_LIMIT,
    kernel: str | None = None,
) -> bool:
    """Append what was just applied, unless it is the newest entry already. True
    when an entry was added."""
    entries = read_history(paths, network)
    digest = sha256_bytes(content)
    if entries and entries[-1].sha256 == digest and entries[-1].generation == generation:
        return False
    entries.append(
        Applied(
            generation=generation,
            time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            sha256=digest,
            file=file,
            kernel=kernel if kernel is not None else os.uname().release,
            content=content.decode("utf-8", errors="replace"),
        )
    )
    entries = entries[-limit:]
    history_dir(paths).mkdir(parents=True, exist_ok=True)
    body = {"network": network, "applied": [asdict(e) for e in entries]}
    atomic_write(_path(paths, network), (json.dumps(body, indent=1) + "\n").encode(), mode=0o600)
    return True


def last_good(paths: HostPaths, network: str) -> Applied | None:
    entries = read_history(paths, network)
    return entries[-1] if entries else None


def prune_history(paths: HostPaths, managed: set[str]) -> None:
    """Drop the history of networks no longer on this node. Called after the manifest
    that records their removal is saved (intent first), so it never frees the space
    a failing save needed, nor forgets a network the manifest still names."""
    for network in networks_with_history(paths):
        if network not in managed:
            _path(paths, network).unlink(missing_ok=True)
