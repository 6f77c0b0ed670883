"""One client connection: reading the request (and the netns fd sent with it), answering.

The shim sends its network namespace as an SCM_RIGHTS descriptor with the first bytes of
the request, so the first read must be a recvmsg that can take it; every later read is a
plain recv.
"""

from __future__ import annotations

import contextlib
import os
import socket

from node_plugin.server.protocol import MAX_ENV, MAX_STDIN, ProtocolError, Reply, encode_reply


class ConnectionReader:
    """`read_exact` over a connection; the first read also takes the caller's netns fd."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._pending = b""
        self.netns_fd: int | None = None
        self._first = True

    def _first_read(self) -> None:
        self._first = False
        data, fds, _flags, _addr = socket.recv_fds(self._conn, 65536, 1)
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
            chunk = self._conn.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise ProtocolError(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def close_fd(self) -> None:
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None


def send_reply(conn: socket.socket, reply: Reply, timeout: float, *, drain: bool = False) -> None:
    """Sends `reply`, giving up after `timeout` (a peer that stopped reading is its problem).

    `drain`: the request was not read to its end (refused or malformed). Closing with
    unread input resets the connection and the peer may lose the reply, so read (and
    drop) what it still sends, briefly and boundedly.
    """
    conn.settimeout(timeout)
    with contextlib.suppress(OSError):
        conn.sendall(encode_reply(reply))
        if drain:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(0.5)
            budget = MAX_STDIN + MAX_ENV
            while budget > 0 and (chunk := conn.recv(65536)):
                budget -= len(chunk)
