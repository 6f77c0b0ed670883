"""The resident CNI server behind the static shim.

One process per node keeps the plugin code imported and its netlink sockets warm, so a
pod's ADD costs the plugin's actual work instead of an interpreter start plus imports.

Shape: a fixed set of worker threads each accept a connection, read the request (with a
time limit), run it and answer; that bounds concurrency, and further connections wait in
the listen backlog. A watchdog answers "try again" (11) for a request past its deadline
while its worker finishes the work. Requests for one attachment (container id, ifname)
run one after another, in arrival order. DELs the shim could not deliver are in
the DEL queue; they are replayed before the first connection is accepted, before any ADD
while the queue is not empty, and every few seconds. DEL answers once the veth pair is out
of service and leaves its unregistration (10-30 ms of kernel time) to the reaper thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node_plugin.server import netns
from node_plugin.server.delqueue import DEFAULT_DEL_QUEUE, DelQueue
from node_plugin.server.protocol import (
    MAX_ENV,
    MAX_STDIN,
    ProtocolError,
    Reply,
    Request,
    decode_request,
    encode_reply,
    read_request,
)
from node_plugin.server.reaper import Reaper

log = logging.getLogger("cniwarden.cni_server")

Handler = Callable[[Request], Reply]

DEFAULT_SOCKET = Path("/run/cniwarden/cni.sock")

# CNI error codes the server itself produces.
CNI_IO_FAILURE = 5
CNI_TRY_AGAIN = 11
CNI_INTERNAL = 999

_PEERCRED = struct.Struct("3i")


class ServerError(Exception):
    """The server cannot start (another one runs, the socket path is unusable...)."""


@dataclass(frozen=True)
class ServerConfig:
    socket_path: Path = DEFAULT_SOCKET
    del_queue: Path = DEFAULT_DEL_QUEUE
    workers: int = 8  # requests served at once; more wait in the listen backlog
    request_timeout: float = 25.0
    read_timeout: float = 5.0
    replay_interval: float = 5.0
    reap_interval: float = 5.0  # sweeps of the server's own namespace for tombstones
    hold_tombstones: bool = False  # tests: DEL buries, nothing is unregistered
    # Peers allowed to talk to the server, by SO_PEERCRED uid; empty = the server's euid.
    allowed_uids: frozenset[int] = field(default_factory=frozenset)


def _config_version(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return "1.1.0"
    return version if isinstance(version, str) and version else "1.1.0"


def error_reply(request: Request | None, code: int, msg: str, details: str = "") -> Reply:
    """A CNI error object on stdout and exit 1, as the plugins answer."""
    version = _config_version(request.stdin) if request else "1.1.0"
    body: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        body["details"] = details
    return Reply(exit_code=1, stdout=json.dumps(body).encode() + b"\n")


class _AttachmentLocks:
    """One FIFO-ish lock per (container id, ifname), dropped when nobody holds it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str] | None) -> Iterator[None]:
        if key is None:
            yield
            return
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._mutex:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class _ConnectionReader:
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


@dataclass
class _Flight:
    """A request being served: answered once, by its worker or by the watchdog."""

    conn: socket.socket
    request: Request
    deadline: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    answered: bool = False


class CniServer:
    def __init__(self, handler: Handler, config: ServerConfig) -> None:
        self._handler = handler
        self._config = config
        self._queue = DelQueue(config.del_queue)
        self._allowed = config.allowed_uids or frozenset({os.geteuid()})
        self._attachments = _AttachmentLocks()
        self.reaper = Reaper(interval=config.reap_interval, hold=config.hold_tombstones)
        self._replay_lock = threading.Lock()
        self._stopping = threading.Event()
        self._flights: dict[int, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._socket_inode: tuple[int, int] | None = None
        self._workers: list[threading.Thread] = []
        self._helpers: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Binds the socket, replays queued DELs, then starts accepting."""
        self._listener = self._bind()
        self._queue.remove_stale_temps()
        self.replay_queue()
        # Tombstones of a server that was killed, and those of the replayed DELs: gone
        # before the first request is served.
        if self.reaper.sweep():
            log.info("unregistered tombstones at start (a killed server's, the replayed DELs')")
        self.reaper.start()
        # Each worker accepts for itself: no hand-off between threads on the hot path
        # (measured: 46 us per no-op request against 435 us with an acceptor and a pool).
        for n in range(self._config.workers):
            worker = threading.Thread(target=self._worker_loop, name=f"cni-worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        for target, name in (
            (self._watchdog_loop, "cni-watchdog"),
            (self._replay_loop, "cni-replay"),
        ):
            helper = threading.Thread(target=target, name=name, daemon=True)
            helper.start()
            self._helpers.append(helper)
        log.info("serving CNI requests on %s", self._config.socket_path)

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until stop() ran; True if it did."""
        return self._stopping.wait(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets in-flight requests finish (up to `grace`), cleans up."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            # Wakes every worker blocked in accept() (EINVAL), then no new connection.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
        self._remove_socket_file()
        deadline = time.monotonic() + grace
        for thread in self._workers + self._helpers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        abandoned = sum(thread.is_alive() for thread in self._workers)
        self.reaper.stop(timeout=max(1.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        if self._lock_fd is not None:
            # Removed while still held, so a stopped server leaves no file on the node
            # (a server starting meanwhile fails on the held lock and is restarted).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self._config.socket_path}.lock")
            os.close(self._lock_fd)
            self._lock_fd = None
        if abandoned:
            log.warning("stopped with %d request(s) still running", abandoned)
        log.info("stopped")

    def _bind(self) -> socket.socket:
        path = self._config.socket_path
        parent = path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)
            os.chmod(parent, 0o700)
        # The lock file makes "one server per socket" a fact, not a race on the path.
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ServerError(f"another cni-server is serving {path}") from None
        self._lock_fd = lock_fd
        if os.path.lexists(path) and not path.is_socket():
            raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
        # Bind under a temp name, restrict it, then rename: the socket never exists with
        # looser permissions, and a stale one is replaced atomically.
        tmp = parent / f".{path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
            listener.listen(128)
        except OSError as e:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise ServerError(f"cannot listen on {path}: {e}") from e
        st = path.stat()
        self._socket_inode = (st.st_dev, st.st_ino)
        return listener

    def _remove_socket_file(self) -> None:
        path = self._config.socket_path
        with contextlib.suppress(FileNotFoundError):
            st = path.stat()
            if (st.st_dev, st.st_ino) == self._socket_inode:
                path.unlink()

    # ---- connections -----------------------------------------------------------------

    def _worker_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError as e:
                if self._stopping.is_set():
                    return
                log.error("accept failed: %s", e)
                time.sleep(0.1)
                continue
            try:
                self._converse(conn)
            except OSError as e:
                log.info("client went away: %s", e)
            finally:
                conn.close()

    def _converse(self, conn: socket.socket) -> None:
        pid, uid, _gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid not in self._allowed:
            log.warning("refused a request from pid %d uid %d", pid, uid)
            msg = f"cni-server refuses requests from uid {uid}"
            self._answer(conn, error_reply(None, CNI_IO_FAILURE, msg), drain=True)
            return
        conn.settimeout(self._config.read_timeout)
        reader = _ConnectionReader(conn)
        try:
            request = read_request(reader.read_exact)
        except ProtocolError as e:
            reader.close_fd()
            log.warning("bad request from pid %d: %s", pid, e)
            reply = error_reply(None, CNI_IO_FAILURE, f"cniwarden protocol error: {e}")
            self._answer(conn, reply, drain=True)
            return
        except OSError:
            reader.close_fd()
            raise
        request = dataclasses.replace(request, netns_fd=reader.netns_fd, reaper=self.reaper)
        flight = _Flight(conn, request, time.monotonic() + self._config.request_timeout)
        with self._flights_lock:
            self._flights[id(flight)] = flight
        try:
            reply = self._execute(request)
        finally:
            with self._flights_lock:
                del self._flights[id(flight)]
        if not self._answer_once(flight, reply):
            log.warning(
                "%s %s finished after its deadline (exit %d)",
                request.command,
                _who(request),
                reply.exit_code,
            )

    def _answer_once(self, flight: _Flight, reply: Reply) -> bool:
        with flight.lock:
            if flight.answered:
                return False
            flight.answered = True
            self._answer(flight.conn, reply)
            return True

    def _answer(self, conn: socket.socket, reply: Reply, *, drain: bool = False) -> None:
        conn.settimeout(self._config.read_timeout)
        with contextlib.suppress(OSError):
            conn.sendall(encode_reply(reply))
            if drain:
                # Closing with unread input resets the connection, and the peer may lose
                # the reply: read (and drop) what it still sends, briefly and boundedly.
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(0.5)
                budget = MAX_STDIN + MAX_ENV
                while budget > 0 and (chunk := conn.recv(65536)):
                    budget -= len(chunk)

    def _watchdog_loop(self) -> None:
        """Answers "try again" for requests past their deadline; their work goes on."""
        timeout = self._config.request_timeout
        while not self._stopping.wait(min(0.05, timeout / 4)):
            now = time.monotonic()
            with self._flights_lock:
                late = [f for f in self._flights.values() if f.deadline <= now]
            for flight in late:
                request = flight.request
                msg = (
                    f"{request.command} did not finish within {timeout:g}s; it continues in "
                    "the background and requests for this attachment wait for it: retry"
                )
                if self._answer_once(flight, error_reply(request, CNI_TRY_AGAIN, msg)):
                    log.warning(
                        "%s %s still running after %ss", request.command, _who(request), timeout
                    )

    def _execute(self, request: Request) -> Reply:
        try:
            if request.command == "ADD" and self._queue.pending():
                # A queued DEL predates this ADD: keep the runtime's order.
                self.replay_queue()
            start = time.perf_counter()
            with self._attachments.hold(request.attachment):
                try:
                    with netns.entered(request.netns_fd):
                        reply = self._call_handler(request)
                except netns.NetnsError as e:
                    reply = error_reply(request, CNI_IO_FAILURE, str(e))
        finally:
            if request.netns_fd is not None:
                os.close(request.netns_fd)
        log.info(
            "%s %s %s -> %d in %.1f ms",
            request.plugin,
            request.command,
            _who(request),
            reply.exit_code,
            (time.perf_counter() - start) * 1000,
        )
        return reply

    def _call_handler(self, request: Request) -> Reply:
        try:
            return self._handler(request)
        except Exception as e:
            log.exception("%s %s failed", request.command, _who(request))
            return error_reply(request, CNI_INTERNAL, f"internal error in cni-server: {e}")

    # ---- the DEL queue -------------------------------------------------------------

    def replay_queue(self) -> int:
        """Runs every queued DEL, oldest first; returns how many completed."""
        done = 0
        with self._replay_lock:
            for entry in self._queue.entries():
                try:
                    data = entry.read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    request = decode_request(data)
                except ProtocolError as e:
                    log.error("DEL queue entry %s is unreadable: %s", entry.name, e)
                    self._queue.quarantine(entry, str(e).encode())
                    continue
                if request.command != "DEL":
                    self._queue.quarantine(entry, b"not a DEL request")
                    continue
                request = dataclasses.replace(request, reaper=self.reaper)
                with self._attachments.hold(request.attachment):
                    reply = self._call_handler(request)
                if reply.exit_code == 0:
                    self._queue.remove(entry)
                    done += 1
                    log.info("replayed queued DEL %s for %s", entry.name, _who(request))
                elif reply.exit_code == CNI_TRY_AGAIN:
                    log.warning("queued DEL %s: try again later", entry.name)
                else:
                    log.error("queued DEL %s failed for good: %r", entry.name, reply.stdout)
                    self._queue.quarantine(entry, reply.stdout)
        return done

    def _replay_loop(self) -> None:
        while not self._stopping.wait(self._config.replay_interval):
            try:
                if self._queue.pending():
                    self.replay_queue()
                self._queue.remove_stale_temps()
            except OSError as e:
                log.error("DEL queue replay failed: %s", e)


def _who(request: Request) -> str:
    key = request.attachment
    return f"{key[0][:12]}/{key[1]}" if key else "-"
