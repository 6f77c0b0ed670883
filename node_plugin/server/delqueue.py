"""The DEL queue: DELs the shim could not deliver, kept on disk until the server runs them,
and the policy that says when a queued DEL is tried again.

A spool directory (layout in shim/PROTOCOL.md): one file per DEL holding the request frame,
named `del-<20-digit realtime ns>-<pid>.req` so name order is arrival order. Writers create
a hidden temp file, fsync it and rename it in, so readers never see half an entry and no
lock is needed between the shim and the server.

A queued DEL answered "try again" (11) or "IPAM plugin timed out" (132) stays queued and is
tried again after `interval`, then twice as long each time up to `backoff_max`: a DEL that
keeps failing costs less and less, and still runs as soon as its attachment's next request
arrives (see node_plugin.server.replay). Any other error can never succeed by waiting: the
entry is moved to `failed/` with the answer next to it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node_plugin.kernel.durable import fsync_dir, write_all
from node_plugin.server.protocol import Request, encode_request
from node_plugin.server.replies import CNI_DELEGATE_TIMEOUT, CNI_TRY_AGAIN

DEFAULT_DEL_QUEUE = Path("/var/lib/cniwarden/del-queue")
ENTRY_PREFIX = "del-"
ENTRY_SUFFIX = ".req"
FAILED_DIR = "failed"
# Answers to a queued DEL that keep it queued (retried later, less and less often).
RETRY_LATER = frozenset({CNI_TRY_AGAIN, CNI_DELEGATE_TIMEOUT})


class DelQueue:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def entries(self) -> list[Path]:
        """Queued DELs, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [
            self.directory / name
            for name in sorted(names)
            if name.startswith(ENTRY_PREFIX) and name.endswith(ENTRY_SUFFIX)
        ]

    def depth(self) -> int:
        """How many DELs wait (the metrics' queue depth)."""
        try:
            with os.scandir(self.directory) as it:
                return sum(1 for e in it if e.name.startswith(ENTRY_PREFIX))
        except FileNotFoundError:
            return 0

    def pending(self) -> bool:
        """Cheap enough to ask before every ADD (one getdents on a near-empty directory)."""
        try:
            with os.scandir(self.directory) as it:
                return any(e.name.startswith(ENTRY_PREFIX) for e in it)
        except FileNotFoundError:
            return False

    def enqueue(self, request: Request) -> Path:
        """Adds a DEL exactly as the shim does (used by tests and by Python callers)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ns = time.time_ns()
        tmp = self.directory / f".tmp-{os.getpid()}-{ns}"
        final = self.directory / f"{ENTRY_PREFIX}{ns:020d}-{os.getpid()}{ENTRY_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, encode_request(request))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        fsync_dir(self.directory)
        return final

    def remove(self, entry: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        fsync_dir(self.directory)

    def quarantine(self, entry: Path, why: bytes) -> Path:
        """Moves an entry that can never succeed aside, with the reason next to it."""
        failed = self.directory / FAILED_DIR
        failed.mkdir(mode=0o700, exist_ok=True)
        target = failed / entry.name
        (failed / (entry.name + ".reply")).write_bytes(why)
        os.rename(entry, target)
        fsync_dir(self.directory)
        return target

    def remove_stale_temps(self, older_than: float = 60.0) -> None:
        """Temp files left by a shim killed mid-write are incomplete by construction."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as it:
            for e in it:
                if e.name.startswith(".tmp-") and now - e.stat().st_mtime > older_than:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)


@dataclass(frozen=True)
class RetryPolicy:
    """When a queued DEL answered with a RETRY_LATER code is tried again."""

    interval: float = 5.0  # the first wait, and the period of the replay passes
    backoff_max: float = 300.0  # the longest wait between two tries

    @staticmethod
    def keeps(code: int) -> bool:
        """True when an entry answered `code` stays queued (else it is quarantined)."""
        return code in RETRY_LATER

    def wait_after(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th consecutive "try again"."""
        return min(self.interval * 2.0 ** (failures - 1), self.backoff_max)


class RetryBook:
    """Which queued entries wait for a retry, until when (thread-safe, in memory: a
    restarted server tries every entry at once, which is what a restart is for)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._mutex = threading.Lock()
        self._retry_at: dict[str, tuple[float, int]] = {}  # name -> (monotonic, failures)

    def due(self, name: str, now: float) -> bool:
        with self._mutex:
            return self._retry_at.get(name, (0.0, 0))[0] <= now

    def failed(self, name: str, now: float) -> tuple[float, int]:
        """Records one more "try again" for `name`: (seconds until the next try, failures)."""
        with self._mutex:
            failures = self._retry_at.get(name, (0.0, 0))[1] + 1
            wait = self.policy.wait_after(failures)
            self._retry_at[name] = (now + wait, failures)
        return wait, failures

    def forget(self, name: str) -> None:
        with self._mutex:
            self._retry_at.pop(name, None)

    def forget_except(self, names: set[str]) -> None:
        with self._mutex:
            for name in [n for n in self._retry_at if n not in names]:
                del self._retry_at[name]
