"""How many requests do real work at once, and the ones that wait for their turn.

The server runs `count` requests at once (`--workers`), with one thread more than that
accepting connections, so that a connection is always read and the cheap verbs (STATUS,
VERSION) are always answered, whatever the busy workers wait for. A request that finds
every slot taken waits here, in arrival order; the worker that frees a slot takes the
oldest waiting request at once, so the queue never waits for a new connection.
"""

from __future__ import annotations

import collections
import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Slots(Generic[T]):
    def __init__(self, count: int) -> None:
        self._count = count
        self._running = 0
        self._waiting: collections.deque[T] = collections.deque()
        self._mutex = threading.Lock()

    def take_or_wait(self, item: T) -> bool:
        """True: a slot is the caller's, run `item` now. False: `item` waits for one (and
        is handed to whichever worker frees a slot first)."""
        with self._mutex:
            if self._running < self._count and not self._waiting:
                self._running += 1
                return True
            self._waiting.append(item)
            return False

    def next_or_release(self) -> T | None:
        """Called by a worker done with its slot: the oldest waiting item, which keeps the
        slot, or None, and the slot is free."""
        with self._mutex:
            if self._waiting:
                return self._waiting.popleft()
            self._running -= 1
            return None

    def take_waiting(self) -> T | None:
        """For a worker without a slot (a new one): the oldest waiting item if a slot is
        free, with the slot."""
        with self._mutex:
            if self._waiting and self._running < self._count:
                self._running += 1
                return self._waiting.popleft()
            return None

    def give_up(self) -> None:
        """The slot of a request whose worker was retired goes back to the pool."""
        with self._mutex:
            self._running -= 1

    def drain(self) -> list[T]:
        """Everything still waiting (at stop), removed."""
        with self._mutex:
            items = list(self._waiting)
            self._waiting.clear()
            return items

    @property
    def running(self) -> int:
        with self._mutex:
            return self._running
