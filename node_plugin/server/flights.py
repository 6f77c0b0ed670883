"""The requests being served, each answered exactly once: by its worker or by the watchdog.

A connection is in flight from the moment it is accepted: its request deadline runs from
then, so neither a slow client nor a wait for a free worker extends it. A request past
its deadline is answered "try again" by the watchdog; the worker's own late answer must
then be dropped, never sent as a second reply on the same connection. The watchdog also
retires the worker of such a request (node_plugin.server.server starts another one in its
place), and the two must agree on whether the work finished first: `lock` orders them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from node_plugin.server.protocol import Reply, Request
from node_plugin.server.replies import who

READING = "(reading)"  # the verb in_flight() shows before the request is read


@dataclass(eq=False)
class Worker:
    """One worker thread's identity; `retired` once the watchdog gave its place away."""

    name: str
    retired: bool = False


@dataclass(eq=False)
class Flight:
    """A connection being served, from accept to answer."""

    conn: socket.socket
    deadline: float  # time.monotonic(): accept + the request timeout
    request: Request | None = None  # None while it is being read
    netns_fd: int | None = None  # the caller's namespace, sent with the request; ours to close
    heavy: bool = False  # it holds (or waits for) one of the server's slots
    worker: Worker | None = None  # the thread running it, once one does
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: bool = False
    finished: bool = False  # its worker is done with it
    abandoned: bool = False  # the watchdog retired its worker first

    def answer_once(self, reply: Reply, send: Callable[[socket.socket, Reply], None]) -> bool:
        """Sends `reply` unless the request was answered already; True if it was sent."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            send(self.conn, reply)
            return True

    def start(self, worker: Worker) -> bool:
        """`worker` takes the request; False if it was answered meanwhile (while it waited
        for a slot): it must not run then."""
        with self.lock:
            if self.answered:
                return False
            self.worker = worker
            return True

    def finish(self) -> bool:
        """The worker is done; True if the watchdog had retired it before (its slot and
        its place are someone else's now)."""
        with self.lock:
            self.finished = True
            return self.abandoned

    def abandon(self) -> Worker | None:
        """The watchdog retires the running worker: that worker, or None when the request
        is not running (still waiting) or finished first."""
        with self.lock:
            if self.worker is None or self.finished or self.abandoned:
                return None
            self.abandoned = True
            return self.worker

    def close(self) -> None:
        """Closes the connection and the caller's netns descriptor (idempotent)."""
        if self.netns_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.netns_fd)
            self.netns_fd = None
        self.conn.close()


class Flights:
    """The table of connections in flight (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[int, Flight] = {}

    def add(self, flight: Flight) -> None:
        with self._lock:
            self._flights[id(flight)] = flight

    def remove(self, flight: Flight) -> None:
        with self._lock:
            self._flights.pop(id(flight), None)

    def late(self, now: float) -> list[Flight]:
        """The requests whose deadline has passed at `now` and that were read (a
        connection still being read is bounded by its own read deadline)."""
        with self._lock:
            return [
                f for f in self._flights.values() if f.deadline <= now and f.request is not None
            ]

    def describe(self) -> list[tuple[str, str]]:
        """(verb, attachment) of each connection in flight, arrival order not kept; a
        connection whose request is still being read shows as (READING, "-")."""
        with self._lock:
            flights = list(self._flights.values())
        return [
            (f.request.command, who(f.request)) if f.request else (READING, "-") for f in flights
        ]
