"""Directory change notifications from the kernel (inotify), for the asyncio loop.

Written on ctypes (three libc calls) rather than a dependency: the agent needs
only "something changed in these directories" delivered to kopf's event loop
via `loop.add_reader`, which the pure-Python inotify wrappers do not offer
without their own threads or loops. A directory that is removed and recreated
(containerd#6490) is watched again on the next `rearm()`, even when the kernel
has not yet said it was removed: that notice (IN_DELETE_SELF) comes only when
the last reference to the old directory goes, and a shell `cd`'d into it or an
open file descriptor can hold it for as long as it likes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True)
class DirEvent:
    directory: Path
    name: str
    mask: int


class DirectoryWatcher:
    """Watches a fixed set of directories; `wait()` returns the next batch of events."""

    def __init__(self, directories: list[Path]) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            hint = ""
            if err == errno.EMFILE:
                # Instances are counted per user, machine-wide (kubelets hold many).
                hint = " (this user's fs.inotify.max_user_instances, or this process's fds)"
            raise OSError(err, f"inotify_init1: {os.strerror(err)}{hint}")
        self.fd: int = fd
        self.directories = list(directories)
        self._by_wd: dict[int, Path] = {}
        self._ready = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rearm()

    def rearm(self) -> None:
        """Make each directory's watch follow what its path is now.

        inotify_add_watch returns the existing wd for an inode already watched and a
        new wd for a new inode, so asking again for every path is exact: a new wd
        means the path was removed and recreated, and the old watch (on a directory
        no path leads to any more) is dropped; a path that is gone drops its watch.
        Watches of directories no longer in `directories` are dropped too.
        """
        wanted = set(self.directories)
        for wd, directory in list(self._by_wd.items()):
            if directory not in wanted:
                self._forget(wd)
        by_path = {directory: wd for wd, directory in self._by_wd.items()}
        for directory in self.directories:
            old = by_path.get(directory)
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), WATCH_MASK | IN_ONLYDIR)
            if wd < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOENT, errno.ENOTDIR):
                    raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
                if old is not None:
                    self._forget(old)
                continue
            if old is not None and old != wd:
                self._forget(old)
            self._by_wd[wd] = directory

    def _forget(self, wd: int) -> None:
        """Stop a watch; its IN_IGNORED (if any) is skipped by `read_events`."""
        self._by_wd.pop(wd, None)
        _libc.inotify_rm_watch(self.fd, wd)  # EINVAL if the kernel dropped it already

    @property
    def missing(self) -> list[Path]:
        watched = set(self._by_wd.values())
        return [d for d in self.directories if d not in watched]

    def read_events(self) -> list[DirEvent]:
        try:
            buffer = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset + _EVENT_HEADER.size <= len(buffer):
            wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(buffer, offset)
            offset += _EVENT_HEADER.size
            raw_name = buffer[offset : offset + length].rstrip(b"\0")
            offset += length
            directory = self._by_wd.get(wd)
            if directory is None:
                continue
            if mask & IN_MOVE_SELF:
                self._forget(wd)  # the kernel would keep watching it where it went
            elif mask & (IN_IGNORED | IN_DELETE_SELF):
                self._by_wd.pop(wd, None)
            events.append(DirEvent(directory, os.fsdecode(raw_name), mask))
        return events

    def _on_readable(self) -> None:
        self._ready.set()

    async def wait(self, timeout: float | None = None) -> list[DirEvent]:
        """Wait for changes (or the timeout); returns what happened, maybe nothing."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
            loop.add_reader(self.fd, self._on_readable)
            self._loop = loop
        events = self.read_events()
        if events:
            return events
        self._ready.clear()
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return []
        return self.read_events()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        os.close(self.fd)
