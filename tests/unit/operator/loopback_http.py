"""A small HTTP server on 127.0.0.1 whose pace and size the test sets, for the
download limits of declared binaries. Raw sockets, so a body can trickle one byte
per second, stall after the headers, or go on without end; it counts requests.
Stopped (threads joined, sockets closed) by `close()`, which the fixtures always call.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Handler = Callable[[socket.socket, threading.Event], None]


def respond(body: bytes, *, length: int | None = None) -> Handler:
    """A plain 200 with `body` (and a Content-Length, `length` if given)."""

    def handle(conn: socket.socket, _stop: threading.Event) -> None:
        size = len(body) if length is None else length
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + body)

    return handle


def trickle(body: bytes, every: float) -> Handler:
    """200 with the right Content-Length, then one byte per `every` seconds."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for index in range(len(body)):
            if stop.wait(every):
                return
            conn.sendall(body[index : index + 1])

    return handle


def stall() -> Handler:
    """Headers promising a body, then nothing until the server stops."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        stop.wait()

    return handle


def endless() -> Handler:
    """A chunked body that never ends (no Content-Length to refuse up front)."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        while not stop.is_set():
            conn.sendall(chunk)

    return handle


def redirect(location: str) -> Handler:
    def handle(conn: socket.socket, _stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location.encode()
        )

    return handle


@dataclass
class LoopbackServer:
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="loopback-http", daemon=True)
        self._accepter.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(30)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            handler = self.routes.get(path)
            if handler is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            handler(conn, self._stop)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(timeout=10)
        self._listener.close()
        for worker in self._threads:
            worker.join(timeout=10)


@contextlib.contextmanager
def serving(routes: dict[str, Handler]) -> Iterator[LoopbackServer]:
    server = LoopbackServer(dict(routes))
    try:
        yield server
    finally:
        server.close()
