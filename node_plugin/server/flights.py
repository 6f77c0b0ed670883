"""The requests being served, each answered exactly once: by its worker or by the watchdog.

A request past its deadline is answered "try again" by the watchdog while its worker goes
on with the work; the worker's own late answer must then be dropped, never sent as a
second reply on the same connection.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from node_plugin.server.protocol import Reply, Request
from node_plugin.server.replies import who


@dataclass
class Flight:
    """A request being served."""

    conn: socket.socket
    request: Request
    deadline: float  # time.monotonic()
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: bool = False

    def answer_once(self, reply: Reply, send: Callable[[socket.socket, Reply], None]) -> bool:
        """Sends `reply` unless the request was answered already; True if it was sent."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            send(self.conn, reply)
            return True


class Flights:
    """The table of requests in flight (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[int, Flight] = {}

    def add(self, flight: Flight) -> None:
        with self._lock:
            self._flights[id(flight)] = flight

    def remove(self, flight: Flight) -> None:
        with self._lock:
            del self._flights[id(flight)]

    def late(self, now: float) -> list[Flight]:
        """The flights whose deadline has passed at `now`."""
        with self._lock:
            return [f for f in self._flights.values() if f.deadline <= now]

    def describe(self) -> list[tuple[str, str]]:
        """(verb, attachment) of each request being served, arrival order not kept."""
        with self._lock:
            return [(f.request.command, who(f.request)) for f in self._flights.values()]
