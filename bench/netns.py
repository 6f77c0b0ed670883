"""Network namespaces for the latency benches: a private "node" namespace the bench
process moves into, plus the sandboxes, all deleted at the end even on failure."""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into the named netns; exec'd plugins start there too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


@contextlib.contextmanager
def namespaces(prefix: str, count: int, host: str) -> Iterator[tuple[str, list[str]]]:
    """`<prefix>-<host>` and `count` sandboxes `<prefix>-s<i>`, deleted in reverse order."""
    made: list[str] = []
    try:
        for name in [f"{prefix}-{host}", *(f"{prefix}-s{i}" for i in range(count))]:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            made.append(name)
        yield made[0], made[1:]
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
