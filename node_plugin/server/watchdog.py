"""The watchdog: a request past its deadline is answered "try again" (11), and its worker
is replaced.

The runtime's own timeout is longer than ours (the shim's is 30 s, ours 25 s), so it gets a
CNI answer it knows how to handle instead of a killed plugin. The work itself goes on (it
may be in the middle of kernel changes that its own undo must finish), and requests for
the same attachment keep waiting for it, up to their own deadlines; but its thread no
longer counts as one of the server's workers: `replace` starts another one in its place,
so a request that never ends costs one thread, never the server's capacity.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from node_plugin.server.flights import Flight, Flights
from node_plugin.server.protocol import Reply
from node_plugin.server.replies import CNI_TRY_AGAIN, error_reply, who

log = logging.getLogger("cniwarden.cni_server")


def watch(
    flights: Flights,
    timeout: float,
    stopping: threading.Event,
    send: Callable[[socket.socket, Reply], None],
    replace: Callable[[Flight], None],
) -> None:
    """Runs until `stopping` is set, looking at the flights every 50 ms (or timeout/4)."""
    while not stopping.wait(min(0.05, timeout / 4)):
        for flight in flights.late(time.monotonic()):
            try:
                _answer_late(flight, timeout, send)
                replace(flight)
            except Exception:  # one flight must never end the watchdog for all others
                log.exception("watchdog: handling a late request failed")


def _answer_late(
    flight: Flight, timeout: float, send: Callable[[socket.socket, Reply], None]
) -> None:
    request = flight.request
    assert request is not None  # Flights.late() lists read requests only
    msg = (
        f"{request.command} did not finish within {timeout:g}s; it continues in "
        "the background and requests for this attachment wait for it: retry"
    )
    if flight.answer_once(error_reply(request, CNI_TRY_AGAIN, msg), send):
        log.warning("%s %s still running after %ss", request.command, who(request), timeout)
