"""The DEL queue: DELs the shim could not deliver, kept on disk until the server runs them.

A spool directory (layout in shim/PROTOCOL.md): one file per DEL holding the request frame,
named `del-<20-digit realtime ns>-<pid>.req` so name order is arrival order. Writers create
a hidden temp file, fsync it and rename it in, so readers never see half an entry and no
lock is needed between the shim and the server.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from node_plugin.server.protocol import Request, encode_request

DEFAULT_DEL_QUEUE = Path("/var/lib/cniwarden/del-queue")
ENTRY_PREFIX = "del-"
ENTRY_SUFFIX = ".req"
FAILED_DIR = "failed"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            os.write(fd, encode_request(request))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        return final

    def remove(self, entry: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        _fsync_dir(self.directory)

    def quarantine(self, entry: Path, why: bytes) -> Path:
        """Moves an entry that can never succeed aside, with the reason next to it."""
        failed = self.directory / FAILED_DIR
        failed.mkdir(mode=0o700, exist_ok=True)
        target = failed / entry.name
        (failed / (entry.name + ".reply")).write_bytes(why)
        os.rename(entry, target)
        _fsync_dir(self.directory)
        return target

    def remove_stale_temps(self, older_than: float = 60.0) -> None:
        """Temp files left by a shim killed mid-write are incomplete by construction."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as it:
            for e in it:
                if e.name.startswith(".tmp-") and now - e.stat().st_mtime > older_than:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
