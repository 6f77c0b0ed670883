"""Deterministic fault injection for the agent's write paths, outside the product.

`run_child(fn)` runs `fn` in a forked child with a Python audit hook (PEP 578)
that numbers every file-system call the interpreter reports before making it:
`open`, `os.rename` (and `os.replace`), `os.link`, `os.symlink`, `os.remove`,
`os.rmdir`, `os.mkdir`, `os.chmod`, `os.chown`, `os.utime`, `os.truncate`,
`os.listdir`, `os.scandir`. With `kill_at=k` the child SIGKILLs itself at the
k-th of them, before it happens: kill -9 at an exact, repeatable point of the
write path. `act_at` instead runs a callback there (e.g. another writer renaming
a file into place) and carries on. Writes and fsyncs have no audit event; the
calls around them bracket them.

Nothing here is imported by the product; the product needs no hook for it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

AUDITED = frozenset(
    {
        "open",
        "os.rename",
        "os.link",
        "os.symlink",
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.utime",
        "os.truncate",
        "os.listdir",
        "os.scandir",
    }
)


@dataclass
class ChildRun:
    events: list[str] = field(default_factory=list)  # "event args", in order
    killed: bool = False
    error: str | None = None  # the child's traceback, if `fn` raised

    @property
    def count(self) -> int:
        return len(self.events)


def _describe(event: str, args: tuple[Any, ...]) -> str:
    shown = []
    for arg in args:
        if isinstance(arg, (str, bytes, os.PathLike)):
            shown.append(
                os.fsdecode(arg).rsplit("/", 2)[-1] if isinstance(arg, bytes) else str(arg)
            )
        elif isinstance(arg, int):
            shown.append(str(arg))
    return f"{event} {' '.join(shown)}"[:300]


def run_child(
    fn: Callable[[], None],
    *,
    kill_at: int | None = None,
    act_at: int | None = None,
    action: Callable[[], None] | None = None,
    timeout: float = 60.0,
) -> ChildRun:
    """Run `fn` in a child process, numbering its audited file-system calls."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        count = 0
        busy = False

        def hook(event: str, args: tuple[Any, ...]) -> None:
            nonlocal count, busy
            if busy or event not in AUDITED:
                return
            busy = True
            try:
                count += 1
                line = json.dumps({"event": _describe(event, args)}) + "\n"
                os.write(write_fd, line.encode())
                if count == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if count == act_at and action is not None:
                    action()
            finally:
                busy = False

        code = 0
        try:
            sys.addaudithook(hook)
            fn()
        except BaseException:
            busy = True  # the report itself is not counted
            os.write(write_fd, (json.dumps({"error": traceback.format_exc()}) + "\n").encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    run = ChildRun()
    buffer = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"the child ran longer than {timeout}s")
            ready, _, _ = select.select([read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            buffer += chunk
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    for raw in buffer.decode().splitlines():
        record = json.loads(raw)
        if "event" in record:
            run.events.append(record["event"])
        else:
            run.error = record["error"]
    run.killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return run
