"""The resident CNI server behind the static shim.

One process per node keeps the plugin code imported and its netlink sockets warm, so a
pod's ADD costs the plugin's actual work instead of an interpreter start plus imports.

Shape: a fixed set of worker threads each accept a connection, read the request (with a
time limit), run it and answer; that bounds concurrency, and further connections wait in
the listen backlog. A watchdog answers "try again" (11) for a request past its deadline
while its worker finishes the work. Requests for one attachment (container id, ifname)
run one after another, in arrival order. DEL answers once the veth pair is out of service
and leaves its unregistration (10-30 ms of kernel time) to the reaper thread.

DELs the shim could not deliver are in the DEL queue. A replay thread runs it at start
(serving begins when that first pass is done, or after `start_replay_wait`) and every
few seconds; it never waits for a busy attachment: that entry waits for the next pass.
An ADD or CHECK first replays the queued DELs of its own attachment, under that
attachment's lock, so the runtime's order holds without any request waiting for another
attachment's DEL. Nothing a delegated IPAM plugin does can hold a worker for ever either:
it is killed before the request's deadline (node_plugin.ipam.delegate).
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
CNI_DELEGATE_TIMEOUT = 132
CNI_INTERNAL = 999
# Answers to a queued DEL that keep it queued (retried later, less and less often).
RETRY_LATER = frozenset({CNI_TRY_AGAIN, CNI_DELEGATE_TIMEOUT})

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
    # A queued DEL answered "try again" waits replay_interval, then twice as long... up to:
    replay_backoff_max: float = 300.0
    # At start, serving waits for the queue's first pass at most this long (a DEL whose
    # IPAM plugin hangs must not keep the node from starting pods).
    start_replay_wait: float = 5.0
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
            self._release(key)

    @contextlib.contextmanager
    def try_hold(self, key: tuple[str, str]) -> Iterator[bool]:
        """Holds the attachment if it is free; yields False (holding nothing) if not."""
        with self._mutex:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        if not lock.acquire(blocking=False):
            self._release(key)
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
            self._release(key)

    def _release(self, key: tuple[str, str]) -> None:
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
        self._first_replay = threading.Event()
        # Queue entries never change once written: their attachment is read once. Entries
        # answered "try again": (monotonic time of the next try, failures so far).
        self._entry_mutex = threading.Lock()
        self._entry_keys: dict[str, tuple[str, str]] = {}
        self._retry_at: dict[str, tuple[float, int]] = {}
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
        """Binds the socket, replays queued DELs (for a bounded time), then serves."""
        self._listener = self._bind()
        self._queue.remove_stale_temps()
        self.reaper.start()  # replayed DELs hand it their tombstones
        self._start_helper(self._replay_loop, "cni-replay")
        wait = self._config.start_replay_wait
        if not self._first_replay.wait(wait):
            log.warning(
                "the DEL queue's first replay still runs after %gs: serving meanwhile "
                "(requests for the attachment being replayed wait for it)",
                wait,
            )
        # Tombstones of a server that was killed, and those of the replayed DELs: gone
        # before the first request is served.
        if self.reaper.sweep():
            log.info("unregistered tombstones at start (a killed server's, the replayed DELs')")
        # Each worker accepts for itself: no hand-off between threads on the hot path
        # (measured: 46 us per no-op request against 435 us with an acceptor and a pool).
        for n in range(self._config.workers):
            worker = threading.Thread(target=self._worker_loop, name=f"cni-worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._start_helper(self._watchdog_loop, "cni-watchdog")
        log.info("serving CNI requests on %s", self._config.socket_path)

    def _start_helper(self, target: Callable[[], None], name: str) -> None:
        helper = threading.Thread(target=target, name=name, daemon=True)
        helper.start()
        self._helpers.append(helper)

    def in_flight(self) -> list[tuple[str, str]]:
        """(verb, attachment) of each request being served, arrival order not kept."""
        with self._flights_lock:
            return [(f.request.command, _who(f.request)) for f in self._flights.values()]

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
        running = self.in_flight()
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
            log.warning(
                "stopped with %d request(s) still running: %s",
                abandoned,
                ", ".join(f"{verb} {who}" for verb, who in running) or "-",
            )
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
        deadline = time.monotonic() + self._config.request_timeout
        request = dataclasses.replace(
            request, netns_fd=reader.netns_fd, reaper=self.reaper, deadline=deadline
        )
        flight = _Flight(conn, request, deadline)
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
            start = time.perf_counter()
            key = request.attachment
            with self._attachments.hold(key):
                if key is not None and request.command != "DEL" and self._queue.pending():
                    # A queued DEL of this attachment predates this request: keep the
                    # runtime's order. (A DEL does what the queued one would.)
                    self._replay_attachment(key)
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
        """One pass over the queued DELs, oldest first; returns how many completed.

        Never waits: an entry whose attachment is busy (a request or another replay holds
        it), or that was answered "try again" not long ago, is left for a later pass.
        """
        done = 0
        busy: set[tuple[str, str]] = set()
        entries = self._queue.entries()
        self._forget_entries_except({entry.name for entry in entries})
        for entry in entries:
            if self._stopping.is_set():
                break
            request = self._load_entry(entry)
            if request is None or request.attachment in busy:
                continue
            key = request.attachment
            assert key is not None  # _load_entry quarantines entries without one
            with self._entry_mutex:
                retry_at = self._retry_at.get(entry.name, (0.0, 0))[0]
            if retry_at > time.monotonic():
                busy.add(key)  # and the attachment's later entries wait behind it
                continue
            with self._attachments.try_hold(key) as held:
                if not held:
                    busy.add(key)  # its later entries too: they stay in order
                    continue
                done += self._replay_entry(entry, request)
        return done

    def _replay_attachment(self, key: tuple[str, str]) -> None:
        """Runs the queued DELs of one attachment, oldest first; the caller holds its lock."""
        for entry in self._queue.entries():
            with self._entry_mutex:
                known = self._entry_keys.get(entry.name)
            if known is not None and known != key:
                continue
            request = self._load_entry(entry)
            if request is not None and request.attachment == key:
                self._replay_entry(entry, request)

    def _load_entry(self, entry: Path) -> Request | None:
        """The queued DEL in `entry`; None (and the entry quarantined) if it is not one,
        None if it is gone."""
        try:
            data = entry.read_bytes()
        except FileNotFoundError:
            return None
        why: str
        try:
            request = decode_request(data)
        except ProtocolError as e:
            log.error("DEL queue entry %s is unreadable: %s", entry.name, e)
            why = str(e)
        else:
            if request.command != "DEL":
                why = "not a DEL request"
            elif request.attachment is None:
                why = "a DEL without CNI_CONTAINERID"
            else:
                with self._entry_mutex:
                    self._entry_keys[entry.name] = request.attachment
                return request
        with self._entry_mutex, contextlib.suppress(FileNotFoundError):
            self._queue.quarantine(entry, why.encode())  # another thread may have
        return None

    def _replay_entry(self, entry: Path, request: Request) -> int:
        """Runs one queued DEL; the caller holds its attachment. 1 when it completed."""
        if not entry.exists():
            return 0  # replayed meanwhile (by whoever held the attachment before us)
        request = dataclasses.replace(
            request,
            reaper=self.reaper,
            deadline=time.monotonic() + self._config.request_timeout,
        )
        reply = self._call_handler(request)
        code = _error_code(reply)
        if code is None:
            self._queue.remove(entry)
            self._forget_entry(entry.name)
            log.info("replayed queued DEL %s for %s", entry.name, _who(request))
            return 1
        if code in RETRY_LATER:
            with self._entry_mutex:
                failures = self._retry_at.get(entry.name, (0.0, 0))[1] + 1
                wait = min(
                    self._config.replay_interval * 2 ** (failures - 1),
                    self._config.replay_backoff_max,
                )
                self._retry_at[entry.name] = (time.monotonic() + wait, failures)
            log.warning(
                "queued DEL %s for %s answered %d (%d time(s)): retrying in %gs or before "
                "the next request for the attachment",
                entry.name,
                _who(request),
                code,
                failures,
                wait,
            )
            return 0
        log.error("queued DEL %s failed for good: %r", entry.name, reply.stdout)
        self._queue.quarantine(entry, reply.stdout)
        self._forget_entry(entry.name)
        return 0

    def _forget_entry(self, name: str) -> None:
        with self._entry_mutex:
            self._entry_keys.pop(name, None)
            self._retry_at.pop(name, None)

    def _forget_entries_except(self, names: set[str]) -> None:
        with self._entry_mutex:
            for cache in (self._entry_keys, self._retry_at):
                for name in [n for n in cache if n not in names]:
                    del cache[name]

    def _replay_loop(self) -> None:
        try:
            self._replay_pass()
        finally:
            self._first_replay.set()
        while not self._stopping.wait(self._config.replay_interval):
            self._replay_pass()

    def _replay_pass(self) -> None:
        try:
            if self._queue.pending():
                self.replay_queue()
            self._queue.remove_stale_temps()
        except OSError as e:
            log.error("DEL queue replay failed: %s", e)


def _error_code(reply: Reply) -> int | None:
    """None for success, else the CNI error code (the exit code if stdout has none)."""
    if reply.exit_code == 0:
        return None
    try:
        code = json.loads(reply.stdout).get("code")
    except (ValueError, AttributeError):
        code = None
    return code if isinstance(code, int) else reply.exit_code


def _who(request: Request) -> str:
    key = request.attachment
    return f"{key[0][:12]}/{key[1]}" if key else "-"
