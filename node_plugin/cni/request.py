"""One CNI invocation and its answer, as plain data: what every layer passes around.

Cheap to import (dataclasses only), so the server's wire protocol and the plugins'
protocol layer can both name these types without loading any plugin code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

BRIDGE = "cniwarden-bridge"
HOST_LOCAL = "cniwarden-host-local"
PLUGINS = (BRIDGE, HOST_LOCAL)


class LinkReaper(Protocol):
    """Unregisters tombstoned veth pairs after DEL answered (node_plugin.kernel.tombstones)."""

    def schedule(self) -> None:
        """Tombstones wait in the calling thread's network namespace: reap them soon."""


@dataclass(frozen=True)
class CniRequest:
    plugin: str  # "cniwarden-bridge" | "cniwarden-host-local"
    env: Mapping[str, str]  # the CNI_* variables (extra keys are ignored)
    stdin: bytes
    # Set by a process that outlives the request (the resident server): DEL then leaves
    # the veth pair's unregistration to it. None (a standalone plugin): DEL deletes it.
    reaper: LinkReaper | None = field(default=None, compare=False)
    # When the caller needs the answer (time.monotonic()); the resident server sets it.
    # A delegated IPAM plugin is killed early enough to answer by then.
    deadline: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class CniResponse:
    exit_code: int
    stdout: bytes
