"""Per-attachment ordering: requests for one (container id, ifname) run one at a time.

A runtime that gave up on a slow ADD sends DEL for the same attachment; that DEL must not
overtake the ADD still running, or it would release what the ADD then creates. Requests
for different attachments never wait for each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

Attachment = tuple[str, str]  # (CNI_CONTAINERID, CNI_IFNAME)


class AttachmentLocks:
    """One FIFO-ish lock per attachment, dropped when nobody holds or waits for it (so
    the table never grows with the number of pods a node has seen)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[Attachment, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Attachment | None) -> Iterator[None]:
        """Holds the attachment for the block (None: a request of no attachment, no lock)."""
        if key is None:
            yield
            return
        lock = self._enter(key)
        try:
            with lock:
                yield
        finally:
            self._release(key)

    @contextlib.contextmanager
    def try_hold(self, key: Attachment) -> Iterator[bool]:
        """Holds the attachment if it is free; yields False (holding nothing) if not."""
        lock = self._enter(key)
        if not lock.acquire(blocking=False):
            self._release(key)
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
            self._release(key)

    def _enter(self, key: Attachment) -> threading.Lock:
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
            return lock

    def _release(self, key: Attachment) -> None:
        with self._mutex:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
