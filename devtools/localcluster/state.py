"""What a running cluster created, persisted so `down` can undo it from any process.

Every resource is recorded *before* it is created (and saved), so a bring-up that
fails half-way, or a pytest session that is killed, still leaves a state file
from which `down` removes everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

_Record = TypeVar("_Record")


@dataclass
class ProcessRecord:
    """A process we started; `starttime` (from /proc/PID/stat) guards against pid reuse."""

    name: str
    pid: int
    starttime: int
    log: str
    node: str | None = None


@dataclass
class NodeRecord:
    index: int
    name: str
    netns: str
    veth_host: str
    ip: str
    dir: str
    cgroup_root: str
    containerd_socket: str  # the node's CRI socket, whichever runtime serves it
    mntns: str = ""
    runtime: str = "containerd-1.6"


@dataclass
class ClusterState:
    name: str
    short_id: str
    slot: int
    tier: str
    root: str
    workdir: str
    kubeconfig: str
    server: str
    owner_pid: int | None = None
    cni: str = "none"
    proxy_mode: str = "iptables"
    processes: list[ProcessRecord] = field(default_factory=list)
    bridge: str | None = None
    nodes: list[NodeRecord] = field(default_factory=list)
    fake_nodes: list[str] = field(default_factory=list)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return Path(self.workdir) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        """The state at `path`. Other checkouts on this machine (another branch, an
        older or newer version) may have written it with fields this one does not
        know: those are dropped, so reading another cluster's state never fails."""
        raw: dict[str, Any] = json.loads(path.read_text())
        raw["processes"] = [_known(ProcessRecord, p) for p in raw.get("processes", [])]
        raw["nodes"] = [_known(NodeRecord, n) for n in raw.get("nodes", [])]
        return _known(cls, raw)


def _known(record: type[_Record], raw: dict[str, Any]) -> _Record:
    names = {f.name for f in fields(record)}  # type: ignore[arg-type]
    return record(**{k: v for k, v in raw.items() if k in names})
