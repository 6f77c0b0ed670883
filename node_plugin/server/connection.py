"""One client connection: reading the request (and the netns fd sent with it), answering.

The shim sends its network namespace as an SCM_RIGHTS descriptor with the first bytes of
the request, so the first read must be a recvmsg that can take it; every later read is a
plain recv. The whole request must arrive before one deadline: a timeout per recv would
let a client that sends a byte every few seconds hold a worker for ever (slowloris).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from node_plugin.server.protocol import MAX_ENV, MAX_STDIN, ProtocolError, Reply, encode_reply

DRAIN_TIME = 0.5  # at most this long to read what a refused client still sends


class ReadTimeoutError(ProtocolError):
    """The whole request did not arrive before its deadline."""


class ConnectionReader:
    """`read_exact` over a connection, all of it before `deadline` (time.monotonic());
    the first read also takes the caller's netns fd."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self._conn = conn
        self._deadline = deadline
        self._pending = b""
        self.netns_fd: int | None = None
        self._first = True

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise ReadTimeoutError("the request did not arrive in time")
        self._conn.settimeout(left)

    def _first_read(self) -> None:
        self._first = False
        self._arm()
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._conn, 65536, 1)
        except TimeoutError:
            raise ReadTimeoutError("the request did not arrive in time") from None
        if fds:
            self.netns_fd = fds[0]
        if not data:
            raise ProtocolError("connection closed before the request")
        self._pending = data

    def read_exact(self, n: int) -> bytes:
        if self._first:
            self._first_read()
        out = bytearray(self._pending[:n])
        self._pending = self._pending[n:]
        while len(out) < n:
            self._arm()
            try:
                chunk = self._conn.recv(min(n - len(out), 1 << 20))
            except TimeoutError:
                raise ReadTimeoutError(
                    f"the request did not arrive in time ({len(out)} of {n} bytes)"
                ) from None
            if not chunk:
                raise ProtocolError(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def take_fd(self) -> int | None:
        """The received netns fd, now the caller's to close."""
        fd, self.netns_fd = self.netns_fd, None
        return fd

    def close_fd(self) -> None:
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None


def send_reply(conn: socket.socket, reply: Reply, timeout: float, *, drain: bool = False) -> None:
    """Sends `reply`, giving up after `timeout` in all (a peer that stopped reading is its
    problem).

    `drain`: the request was not read to its end (refused or malformed). Closing with
    unread input resets the connection and the peer may lose the reply, so read (and
    drop) what it still sends, for at most DRAIN_TIME in all.
    """
    conn.settimeout(timeout)  # sendall's timeout bounds the whole call
    with contextlib.suppress(OSError):
        conn.sendall(encode_reply(reply))
        if drain:
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + DRAIN_TIME
            budget = MAX_STDIN + MAX_ENV
            while budget > 0 and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(65536)
                if not chunk:
                    break
                budget -= len(chunk)
