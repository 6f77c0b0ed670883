"""Per-attachment ordering: requests for one (container id, ifname) run one at a time.

A runtime that gave up on a slow ADD sends DEL for the same attachment; that DEL must not
overtake the ADD still running, or it would release what the ADD then creates. Requests
for different attachments never wait for each other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

Attachment = tuple[str, str]  # (CNI_CONTAINERID, CNI_IFNAME)


class AttachmentBusyError(Exception):
    """An earlier request for the attachment was still running at the deadline."""

    def __init__(self, key: Attachment) -> None:
        super().__init__(f"an earlier request for {key[0][:12]}/{key[1]} is still running")
        self.key = key


class AttachmentLocks:
    """One FIFO-ish lock per attachment, dropped when nobody holds or waits for it (so
    the table never grows with the number of pods a node has seen)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[Attachment, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: Attachment | None, deadline: float | None = None) -> Iterator[None]:
        """Holds the attachment for the block (None: a request of no attachment, no lock).

        AttachmentBusyError when an earlier request still holds it at `deadline`
        (time.monotonic()): a request must never wait longer than it may run.
        """
        if key is None:
            yield
            return
        lock = self._enter(key)
        timeout = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not lock.acquire(timeout=timeout):
            self._release(key)
            raise AttachmentBusyError(key)
        try:
            yield
        finally:
            lock.release()
            self._release(key)

    def try_acquire(self, key: Attachment) -> Callable[[], None] | None:
        """Takes the attachment if it is free, for a holder that may outlive the caller
        (another thread releases it): the function that releases it, or None if busy."""
        lock = self._enter(key)
        if not lock.acquire(blocking=False):
            self._release(key)
            return None

        def release() -> None:
            lock.release()
            self._release(key)

        return release

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
