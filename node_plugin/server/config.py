"""The server's settings, with the defaults a node runs with (the chart sets a few)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from node_plugin.server.delqueue import DEFAULT_DEL_QUEUE

DEFAULT_SOCKET = Path("/run/cniwarden/cni.sock")


@dataclass(frozen=True)
class ServerConfig:
    socket_path: Path = DEFAULT_SOCKET
    del_queue: Path = DEFAULT_DEL_QUEUE
    workers: int = 8  # requests served at once; more wait in the listen backlog
    request_timeout: float = 25.0  # below the shim's 30 s, so the runtime gets our answer
    read_timeout: float = 5.0
    replay_interval: float = 5.0
    # A queued DEL answered "try again" waits replay_interval, then twice as long... up to:
    replay_backoff_max: float = 300.0
    # At start, serving waits for the queue's first pass at most this long (a DEL whose
    # IPAM plugin hangs must not keep the node from starting pods).
    start_replay_wait: float = 5.0
    reap_interval: float = 5.0  # sweeps of the server's own namespace for tombstones
    # Peers allowed to talk to the server, by SO_PEERCRED uid; empty = the server's euid.
    allowed_uids: frozenset[int] = field(default_factory=frozenset)
