"""The resident server: socket safety, concurrency, time limits, ordering, the DEL queue."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devtools import fake_handlers as handlers
from node_plugin.server.delqueue import DelQueue
from node_plugin.server.protocol import (
    MAGIC,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_request,
    read_reply,
)
from node_plugin.server.server import CniServer, ServerConfig, ServerError
from tests.integration.fastpath.conftest import ServerFactory, ShimEnv
from tests.integration.plugin.kernel import wait_until


class Recorder:
    """A handler that logs (event, command, container); it can be slowed per command, and
    held per (command, container) until the test opens a gate (a hung IPAM plugin)."""

    def __init__(
        self,
        delays: dict[str, float] | None = None,
        codes: dict[str, int] | None = None,
        gates: dict[tuple[str, str], threading.Event] | None = None,
        meet: threading.Barrier | None = None,
    ):
        self.delays = delays or {}
        self.codes = codes or {}
        self.gates = gates or {}
        # Every ADD waits here for the barrier's other parties: passing it proves they ran
        # at the same time (a server that serialized them breaks the barrier instead).
        self.meet = meet
        self.events: list[tuple[str, str, str]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        container = request.env.get("CNI_CONTAINERID", "")
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.events.append(("start", request.command, container))
        time.sleep(self.delays.get(request.command, 0))
        gate = self.gates.get((request.command, container))
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        if self.meet is not None and request.command == "ADD":
            self.meet.wait()
        with self._lock:
            self.active -= 1
            self.events.append(("end", request.command, container))
        return Reply(self.codes.get(request.command, 0), b"{}" if request.command == "ADD" else b"")

    def commands(self) -> list[tuple[str, str]]:
        return [(cmd, ctr) for event, cmd, ctr in self.events if event == "start"]


def raw_exchange(path: Path, payload: bytes, timeout: float = 5) -> Reply:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return decode_reply(data)


def config(shim: ShimEnv) -> ServerConfig:
    return ServerConfig(socket_path=shim.socket_path, del_queue=shim.queue)


def add_many(shim: ShimEnv, count: int) -> list[int]:
    """`count` ADDs in parallel, one container each; their exit codes."""
    with ThreadPoolExecutor(count) as pool:
        runs = pool.map(
            lambda i: shim.run("ADD", extra_env={"CNI_CONTAINERID": f"c{i}"}), range(count)
        )
        return [run.code for run in runs]


def request(command: str, container: str = "ctr1") -> Request:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0"}
    return Request("cniwarden-bridge", env, b'{"cniVersion":"1.1.0","name":"net"}')


# ---- the socket -----------------------------------------------------------------------


def test_socket_is_root_only(shim: ShimEnv, start_server: ServerFactory) -> None:
    start_server(handlers.echo())
    assert stat.S_IMODE(shim.socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(shim.socket_path.stat().st_mode)
    assert stat.S_IMODE(shim.socket_path.stat().st_mode) == 0o600
    assert [p.name for p in shim.socket_path.parent.iterdir() if ".tmp" in p.name] == []


@pytest.mark.root
def test_peers_with_another_uid_are_refused(shim: ShimEnv, start_server: ServerFactory) -> None:
    recorder = Recorder()
    start_server(recorder)
    # Open the file modes up so that only the SO_PEERCRED check stands in the way.
    os.chmod(shim.socket_path.parents[1], 0o755)
    os.chmod(shim.socket_path.parent, 0o755)
    os.chmod(shim.socket_path, 0o666)
    queue = shim.socket_path.parent / "nobody-queue"
    queue.mkdir()
    os.chown(queue, 65534, 65534)
    run = shim.run("ADD", user=65534, extra_env={"CNIWARDEN_DEL_QUEUE": str(queue)})
    assert run.error_code == 5
    assert "refuses requests from uid 65534" in json.loads(run.stdout)["msg"]
    assert recorder.events == []


def test_a_second_server_on_the_same_socket_is_refused(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    start_server(handlers.echo())
    second = CniServer(
        handlers.echo(), ServerConfig(socket_path=shim.socket_path, del_queue=shim.queue)
    )
    with pytest.raises(ServerError, match="another cni-server"):
        second.start()
    assert shim.run("ADD").code == 0, "the first server still serves"


def test_a_stale_socket_is_replaced(shim: ShimEnv, start_server: ServerFactory) -> None:
    shim.socket_path.parent.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(shim.socket_path))
    stale.close()
    start_server(handlers.echo())
    assert shim.run("ADD").code == 0


def test_a_regular_file_at_the_socket_path_is_left_alone(shim: ShimEnv) -> None:
    shim.socket_path.parent.mkdir(parents=True)
    shim.socket_path.write_text("precious")
    server = CniServer(
        handlers.echo(), ServerConfig(socket_path=shim.socket_path, del_queue=shim.queue)
    )
    with pytest.raises(ServerError, match="not a socket"):
        server.start()
    assert shim.socket_path.read_text() == "precious"


# ---- the protocol, from a hostile client ---------------------------------------------


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "bad magic"),
        (MAGIC + struct.pack(">I", 1 << 30), "over the 255-byte limit"),
        (MAGIC + struct.pack(">I", 3) + b"abc" + struct.pack(">I", 1 << 20), "environment"),
        (MAGIC + struct.pack(">I", 3) + b"ab", "connection closed"),
        (MAGIC + struct.pack(">I", 1) + b"x" + struct.pack(">I", 4) + b"NOEQ", "without '='"),
    ],
)
def test_malformed_requests_get_a_protocol_error(
    shim: ShimEnv, start_server: ServerFactory, payload: bytes, says: str
) -> None:
    recorder = Recorder()
    start_server(recorder)
    reply = raw_exchange(shim.socket_path, payload)
    assert reply.exit_code == 1
    error = json.loads(reply.stdout)
    assert error["code"] == 5
    assert says in error["msg"]
    assert recorder.events == []


def test_a_silent_client_is_dropped_and_does_not_block_others(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    start_server(handlers.echo(), read_timeout=0.3, workers=1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(shim.socket_path))
        silent.sendall(MAGIC)
        assert shim.run("ADD").code == 0
        silent.settimeout(3)
        assert silent.recv(10) == b"", "the server hung up on the silent client"


def test_a_handler_crash_is_an_internal_error_not_a_dead_server(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    def explode(request: Request) -> Reply:
        raise RuntimeError("boom")

    start_server(explode)
    run = shim.run("ADD")
    error = json.loads(run.stdout)
    assert run.code != 0
    assert error["code"] == 999
    assert "boom" in error["msg"]
    assert shim.run("CHECK").code != 0, "still serving"


# ---- concurrency and time limits --------------------------------------------------


def test_concurrency_is_bounded_by_the_worker_pool(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    # ADDs pass two by two: never a third one alongside (it would wait for a fourth).
    recorder = Recorder(meet=threading.Barrier(2, timeout=30))
    start_server(recorder, workers=2)
    with ThreadPoolExecutor(6) as pool:
        runs = list(
            pool.map(lambda i: shim.run("ADD", extra_env={"CNI_CONTAINERID": f"c{i}"}), range(6))
        )
    assert [r.code for r in runs] == [0] * 6, [r.stdout for r in runs]
    assert recorder.max_active == 2


def test_an_overrunning_request_is_answered_try_again_and_ordered_before_the_next(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    work = threading.Event()  # the ADD's work ends only when the test says so
    recorder = Recorder(gates={("ADD", "ctr1"): work})
    server = start_server(recorder, request_timeout=2.0)
    try:
        add = shim.run("ADD")
        # Answered at the deadline, not after the work: the work is still running.
        assert add.error_code == 11
        assert "did not finish within 2s" in json.loads(add.stdout)["msg"]
        assert recorder.events == [("start", "ADD", "ctr1")]
        # The runtime answers a failed ADD with a DEL; it must not overtake the running ADD.
        with ThreadPoolExecutor(1) as pool:
            dele = pool.submit(shim.run, "DEL")
            wait_until(lambda: ("DEL", "ctr1/eth0") in server.in_flight(), "the DEL to arrive")
            assert ("start", "DEL", "ctr1") not in recorder.events, "the DEL overtook the ADD"
            work.set()
            assert dele.result().code == 0
    finally:
        work.set()
    assert shim.queued() == [], "the DEL was served, not queued"
    assert recorder.events == [
        ("start", "ADD", "ctr1"),
        ("end", "ADD", "ctr1"),
        ("start", "DEL", "ctr1"),
        ("end", "DEL", "ctr1"),
    ]


def test_different_attachments_run_in_parallel(shim: ShimEnv, start_server: ServerFactory) -> None:
    # All four ADDs must be in the handler at once to pass the barrier.
    recorder = Recorder(meet=threading.Barrier(4, timeout=30))
    start_server(recorder, workers=4)
    with ThreadPoolExecutor(4) as pool:
        runs = list(
            pool.map(lambda i: shim.run("ADD", extra_env={"CNI_CONTAINERID": f"c{i}"}), range(4))
        )
    assert [r.code for r in runs] == [0] * 4, [r.stdout for r in runs]
    assert recorder.max_active == 4


# ---- shutdown ------------------------------------------------------------------------


def test_stop_finishes_in_flight_requests_then_removes_the_socket(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    work = threading.Event()
    recorder = Recorder(gates={("ADD", "ctr1"): work})
    server = start_server(recorder)
    try:
        with ThreadPoolExecutor(2) as pool:
            pending = pool.submit(shim.run, "ADD")
            wait_until(lambda: ("ADD", "ctr1") in recorder.commands(), "the ADD to be running")
            stopping = pool.submit(server.stop, 30)
            wait_until(lambda: not shim.socket_path.exists(), "stop to remove the socket")
            assert not stopping.done(), "stop waits for the running ADD"
            work.set()
            stopping.result()
            assert pending.result().code == 0
    finally:
        work.set()
    assert shim.run("ADD").error_code == 11
    assert shim.run("DEL").code == 0
    assert len(shim.queued()) == 1


# ---- the DEL queue -----------------------------------------------------------------


def test_queued_dels_are_replayed_in_order_before_serving(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    for i in range(3):
        assert shim.run("DEL", extra_env={"CNI_CONTAINERID": f"gone{i}"}).code == 0
    recorder = Recorder()
    start_server(recorder)
    assert recorder.commands() == [("DEL", "gone0"), ("DEL", "gone1"), ("DEL", "gone2")]
    assert shim.queued() == []
    assert shim.run("ADD", extra_env={"CNI_CONTAINERID": "new"}).code == 0
    assert recorder.commands()[-1] == ("ADD", "new")


def test_a_request_first_replays_the_queued_dels_of_its_own_attachment_only(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    recorder = Recorder()
    start_server(recorder, replay_interval=3600)
    DelQueue(shim.queue).enqueue(request("DEL", "late"))
    DelQueue(shim.queue).enqueue(request("DEL", "other"))
    assert shim.run("ADD", extra_env={"CNI_CONTAINERID": "late"}).code == 0
    assert recorder.commands() == [("DEL", "late"), ("ADD", "late")]
    # Another attachment's queued DEL is the replay thread's business, not this ADD's.
    assert [decode_request_file(p).env["CNI_CONTAINERID"] for p in shim.queued()] == ["other"]


@pytest.mark.timeout(120)
def test_a_hung_attachment_blocks_neither_the_replay_nor_other_attachments(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """The audit's lock-up: an ADD hangs (its IPAM plugin does), the runtime's DEL for it
    is queued, and every later ADD used to replay the whole queue inline and wait for the
    hung attachment, until no worker was left."""
    hung = threading.Event()
    recorder = Recorder(gates={("ADD", "stuck"): hung})
    start_server(recorder, workers=2, request_timeout=1.5, replay_interval=0.05)
    try:
        with ThreadPoolExecutor(1) as pool:
            stuck = pool.submit(shim.run, "ADD", extra_env={"CNI_CONTAINERID": "stuck"})
            wait_until(lambda: ("ADD", "stuck") in recorder.commands(), "the ADD to hang")
            DelQueue(shim.queue).enqueue(request("DEL", "stuck"))
            # More ADDs than workers, one after another: none may wait for "stuck".
            runs = [shim.run("ADD", extra_env={"CNI_CONTAINERID": f"c{i}"}) for i in range(6)]
            assert [r.code for r in runs] == [0] * 6, [r.stdout for r in runs]
            assert stuck.result().error_code == 11  # the watchdog, at its deadline
            assert ("DEL", "stuck") not in recorder.commands()
            assert len(shim.queued()) == 1, "the replay skips the busy attachment, keeps it"
    finally:
        hung.set()
    wait_until(lambda: shim.queued() == [], "the replay to run the DEL once the ADD is done")
    assert [e for e in recorder.events if e[2] == "stuck"] == [
        ("start", "ADD", "stuck"),
        ("end", "ADD", "stuck"),
        ("start", "DEL", "stuck"),
        ("end", "DEL", "stuck"),
    ]


@pytest.mark.timeout(120)
def test_a_queued_del_that_hangs_does_not_keep_the_server_from_serving(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """A restart used to replay the whole queue before serving, and hang with the DEL."""
    hung = threading.Event()
    recorder = Recorder(gates={("DEL", "hung"): hung})
    DelQueue(shim.queue).enqueue(request("DEL", "hung"))
    DelQueue(shim.queue).enqueue(request("DEL", "later"))
    try:
        start_server(recorder, start_replay_wait=0.2, replay_interval=0.05)
        wait_until(lambda: ("DEL", "hung") in recorder.commands(), "the replay to hang")
        assert shim.run("ADD", extra_env={"CNI_CONTAINERID": "new"}).code == 0
        # The replay thread is stuck on "hung"; an ADD for "later" replays its DEL itself.
        assert shim.run("ADD", extra_env={"CNI_CONTAINERID": "later"}).code == 0
        assert recorder.commands() == [
            ("DEL", "hung"),
            ("ADD", "new"),
            ("DEL", "later"),
            ("ADD", "later"),
        ]
    finally:
        hung.set()
    wait_until(lambda: shim.queued() == [], "the hung DEL to complete and leave the queue")


def test_the_queue_is_drained_periodically(shim: ShimEnv, start_server: ServerFactory) -> None:
    recorder = Recorder()
    start_server(recorder, replay_interval=0.1)
    DelQueue(shim.queue).enqueue(request("DEL", "periodic"))
    wait_until(lambda: shim.queued() == [], "the replay thread to run the DEL")
    assert recorder.commands() == [("DEL", "periodic")]


def test_replay_keeps_try_again_and_quarantines_permanent_failures(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    queue = DelQueue(shim.queue)
    queue.enqueue(request("DEL", "retry"))
    queue.enqueue(request("DEL", "ipam-timeout"))
    queue.enqueue(request("ADD", "not-a-del"))
    (shim.queue / "del-00000000000000000001-1.req").write_bytes(b"garbage")

    def handler(req: Request) -> Reply:
        # As the plugins answer: exit 1, the CNI code in the error object.
        code = 11 if req.env["CNI_CONTAINERID"] == "retry" else 132
        return Reply(1, json.dumps({"cniVersion": "1.1.0", "code": code, "msg": "x"}).encode())

    start_server(handler, replay_interval=3600)
    remaining = [decode_request_file(p).env["CNI_CONTAINERID"] for p in shim.queued()]
    assert remaining == ["retry", "ipam-timeout"]
    failed = sorted(p.name for p in (shim.queue / "failed").iterdir())
    assert len(failed) == 4, failed  # two entries, each with its .reply
    garbage_reason = (shim.queue / "failed" / "del-00000000000000000001-1.req.reply").read_text()
    assert "bad magic" in garbage_reason


def test_a_del_that_keeps_asking_to_be_retried_is_retried_less_and_less_often(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    calls: list[float] = []

    def handler(req: Request) -> Reply:
        calls.append(time.monotonic())
        return Reply(1, b'{"cniVersion":"1.1.0","code":11,"msg":"later"}')

    DelQueue(shim.queue).enqueue(request("DEL", "flaky"))
    start_server(handler, replay_interval=0.05, replay_backoff_max=3600)
    wait_until(lambda: len(calls) >= 2, "a retry")
    before = len(calls)
    time.sleep(1.0)
    # Waits of 0.1, 0.2, 0.4, 0.8 s from here: a few retries, not one per 0.05 s pass
    # (a loaded machine only makes it fewer).
    assert len(calls) - before <= 4, calls
    assert len(shim.queued()) == 1


def test_a_permanently_failing_del_is_quarantined_with_its_reply(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    DelQueue(shim.queue).enqueue(request("DEL", "bad"))
    start_server(lambda req: Reply(7, b'{"code":7,"msg":"invalid config"}'))
    assert shim.queued() == []
    (reply,) = (shim.queue / "failed").glob("*.reply")
    assert b"invalid config" in reply.read_bytes()


def decode_request_file(path: Path) -> Request:
    return decode_request(path.read_bytes())


def test_encode_request_matches_what_the_shim_writes(shim: ShimEnv) -> None:
    assert shim.run("DEL", stdin=b"{}").code == 0
    (entry,) = shim.queued()
    data = entry.read_bytes()
    assert encode_request(decode_request_file(entry)) == data


# ---- no request costs the server a thread (issue 11, item 8) ---------------------------


def exchange_with_fd(path: Path, payload: bytes, fd: int, timeout: float = 5) -> Reply:
    """Like the shim: the request's first bytes carry a descriptor (SCM_RIGHTS)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        socket.send_fds(conn, [payload[:16]], [fd])
        conn.sendall(payload[16:])
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return decode_reply(data)


def exchange_one(path: Path, payload: bytes, timeout: float = 5) -> Reply:
    """Sends a request and reads one reply frame, as the shim does (the server may keep
    the connection open after a watchdog answer, until the work is done)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)

        def read_exact(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                assert chunk, "the server closed the connection before its reply"
                data += chunk
            return data

        return read_reply(read_exact)


def server_threads() -> list[str]:
    """The server's threads by role (a replaced worker has a new number, same role)."""
    names = [t.name for t in threading.enumerate() if t.name.startswith("cni-")]
    return sorted(name.rstrip("0123456789") for name in names)


DEEP_STDIN = b'{"cniVersion":"1.1.0","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def deep_request(command: str = "ADD", container: str = "deep") -> bytes:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": "eth0"}
    return encode_request(Request("cniwarden-bridge", env, DEEP_STDIN))


def test_a_deep_request_with_a_foreign_descriptor_kills_no_worker(
    shim: ShimEnv, start_server: ServerFactory, tmp_path: Path
) -> None:
    """The review's crash: 100k-deep JSON plus a descriptor that is no netns. Entering it
    fails, and building that error's reply parsed the stdin for its cniVersion: the
    RecursionError ended cni-worker-0."""
    recorder = Recorder()
    start_server(recorder, workers=1)
    before = server_threads()
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_bytes(b"")
    fd = os.open(not_a_netns, os.O_RDONLY)
    try:
        for _ in range(3):  # more times than there are workers
            reply = exchange_with_fd(shim.socket_path, deep_request(), fd)
            error = json.loads(reply.stdout)
            assert error["code"] == 5, error
            assert "cannot enter the caller's network namespace" in error["msg"]
    finally:
        os.close(fd)
    assert shim.run("ADD").code == 0, "the one worker still serves"
    assert server_threads() == before
    assert recorder.commands() == [("ADD", "ctr1")]


def test_a_deep_request_past_its_deadline_kills_no_watchdog(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """The watchdog's "try again" also read the stdin's cniVersion: a deep request that
    overran ended the cni-watchdog thread, and no later request got its 11."""
    gates = {("ADD", f"deep{i}"): threading.Event() for i in range(2)}
    gates[("ADD", "ctr1")] = threading.Event()
    start_server(Recorder(gates=gates), request_timeout=0.5)
    before = server_threads()
    try:
        for i in range(2):
            reply = exchange_one(shim.socket_path, deep_request(container=f"deep{i}"))
            assert json.loads(reply.stdout)["code"] == 11
        # A plain request that overruns still gets its 11 from the watchdog.
        assert shim.run("ADD").error_code == 11
        assert "cni-watchdog" in server_threads()
    finally:
        for gate in gates.values():
            gate.set()
    wait_until(lambda: server_threads() == before, "the workers to be back")


def test_a_handler_that_raises_system_exit_kills_no_worker(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    def exits(request: Request) -> Reply:
        raise SystemExit(3)

    start_server(exits, workers=1)
    before = server_threads()
    for _ in range(3):
        assert shim.run("ADD").error_code == 999
    assert server_threads() == before


# ---- slow clients (issue 11, item 7) --------------------------------------------------


class Trickler:
    """A client that sends its request one byte at a time, `every` seconds apart, until
    the server drops it or it has sent `limit` bytes (slowloris)."""

    def __init__(self, path: Path, every: float, limit: int) -> None:
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(str(path))
        self.every = every
        self.payload = encode_request(request("ADD", "slow"))[:limit]
        self.dropped = threading.Event()  # the server closed the connection
        self.gave_up = threading.Event()  # it sent everything it was allowed to
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.conn.settimeout(self.every)
        try:
            for byte in self.payload:
                self.conn.send(bytes([byte]))
                with contextlib.suppress(TimeoutError):
                    if self.conn.recv(1) == b"":
                        self.dropped.set()
                        return
        except OSError:  # EPIPE, ECONNRESET: dropped
            self.dropped.set()
            return
        self.gave_up.set()

    def close(self) -> None:
        self.conn.close()
        self._thread.join(10)


def test_slow_clients_cannot_hold_the_workers(shim: ShimEnv, start_server: ServerFactory) -> None:
    """The review's slowloris: clients sending a byte every 3 s held a 2-worker server's
    workers for good (the read timeout was per recv). Each connection now has one
    deadline for its whole request, counted from accept."""
    server = start_server(handlers.echo(), workers=2, read_timeout=1.0)
    # More slow clients than the server has threads; each could trickle for 40 s.
    slow = [Trickler(shim.socket_path, every=0.2, limit=200) for _ in range(4)]
    try:
        # In flight from accept on: the server counts them before any request is read.
        wait_until(
            lambda: server.in_flight().count(("(reading)", "-")) >= 2,
            "the slow connections to be in flight while their requests are read",
        )
        for client in slow:
            assert client.dropped.wait(15), "a slow client was never dropped"
            assert not client.gave_up.is_set()
        run = shim.run("ADD")
        assert run.code == 0, run.stdout
        assert not any(client.gave_up.is_set() for client in slow)
    finally:
        for client in slow:
            client.close()


# ---- no worker is lost for good (issue 11, item 2) -------------------------------------


def test_a_stuck_worker_is_replaced_at_its_deadline(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """The watchdog answered 11 but never freed the worker: a one-worker server then
    served nothing while the request hung. Now another worker takes its place."""
    hung = threading.Event()
    recorder = Recorder(gates={("ADD", "stuck"): hung})
    start_server(recorder, workers=1, request_timeout=0.5)
    fast_fail = {"CNIWARDEN_TIMEOUT_MS": "5000"}  # a shim gives up after 5 s, not 30
    try:
        for i in range(3):  # three hung requests, one after another, on a 1-worker server
            stuck = shim.run("ADD", extra_env={"CNI_CONTAINERID": "stuck", **fast_fail})
            assert stuck.error_code == 11
            run = shim.run("ADD", extra_env={"CNI_CONTAINERID": f"next{i}", **fast_fail})
            assert run.code == 0, run.stdout
        assert [c for c in recorder.commands() if c[1].startswith("next")] == [
            ("ADD", "next0"),
            ("ADD", "next1"),
            ("ADD", "next2"),
        ]
        assert recorder.active == 1, "the hung request still runs, on its retired thread"
    finally:
        hung.set()


def test_status_and_version_are_answered_while_every_worker_is_busy(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """Two hung requests on a 2-worker server left an unrelated STATUS unanswered."""
    gates = {("ADD", f"busy{i}"): threading.Event() for i in range(2)}
    recorder = Recorder(gates=gates)
    server = start_server(recorder, workers=2, request_timeout=60)
    try:
        with ThreadPoolExecutor(3) as pool:
            busy = [
                pool.submit(shim.run, "ADD", extra_env={"CNI_CONTAINERID": f"busy{i}"})
                for i in range(2)
            ]
            wait_until(lambda: recorder.active == 2, "both workers to be busy")
            status = shim.run("STATUS", extra_env={"CNIWARDEN_TIMEOUT_MS": "5000"})
            assert status.code == 0, status.stdout
            env = {"CNI_COMMAND": "VERSION"}
            version = exchange_one(shim.socket_path, encode_request(Request("x", env, b"")))
            assert version.exit_code == 0
            # A third ADD waits for a worker (the pool is the bound), and runs once one
            # is free, in arrival order.
            third = pool.submit(shim.run, "ADD", extra_env={"CNI_CONTAINERID": "third"})
            wait_until(lambda: ("ADD", "third/eth0") in server.in_flight(), "the third ADD")
            assert ("ADD", "third") not in recorder.commands()
            gates[("ADD", "busy0")].set()
            assert third.result().code == 0
            assert busy[0].result().code == 0
            gates[("ADD", "busy1")].set()
            assert busy[1].result().code == 0
    finally:
        for gate in gates.values():
            gate.set()


def test_each_queued_del_replays_under_its_own_deadline(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """The single replay thread used to wait for a hung DEL for ever, and every later
    queued DEL stayed queued (its lease kept) until a request for its own attachment."""
    hung = threading.Event()
    recorder = Recorder(gates={("DEL", "hung"): hung})
    queue = DelQueue(shim.queue)
    queue.enqueue(request("DEL", "hung"))
    for i in range(3):
        queue.enqueue(request("DEL", f"later{i}"))
    try:
        start_server(recorder, start_replay_wait=0.1, replay_interval=0.1, request_timeout=0.5)
        wait_until(
            lambda: shim.queued_container_ids() == ["hung"],
            "the replay to run the later DELs while the first one hangs",
        )
        # (On a loaded machine the hung DEL's thread may even start after the others.)
        wait_until(lambda: ("DEL", "hung") in recorder.commands(), "the hung DEL to run")
        assert sorted(recorder.commands()) == [("DEL", "hung")] + [
            ("DEL", f"later{i}") for i in range(3)
        ]
        assert recorder.active == 1, "only the hung DEL still runs"
    finally:
        hung.set()
    wait_until(lambda: shim.queued() == [], "the hung DEL to complete and leave the queue")


def test_a_request_waits_for_its_attachment_only_until_its_deadline(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    """A DEL behind a hung ADD of the same attachment: answered 11 at its deadline (the
    shim queues it), and it never runs behind the runtime's back afterwards."""
    hung = threading.Event()
    recorder = Recorder(gates={("ADD", "ctr1"): hung})
    start_server(recorder, request_timeout=0.5, replay_interval=3600)
    try:
        assert shim.run("ADD").error_code == 11
        assert shim.run("DEL").code == 0  # answered 11 by the server: queued by the shim
        assert len(shim.queued()) == 1
        assert recorder.commands() == [("ADD", "ctr1")]
    finally:
        hung.set()
    wait_until(lambda: recorder.active == 0, "the hung ADD to end")
    assert recorder.commands() == [("ADD", "ctr1")], "the timed-out DEL never ran"


def test_a_lease_store_locked_outside_the_server_delays_nothing_else(
    shim: ShimEnv, start_server: ServerFactory, workdir: Path
) -> None:
    """A flock held outside the server delayed STATUS by 21 s in the review: the store
    lock had no deadline. Now that network's request fails by the lock's deadline (5 s)
    naming the holder, and other networks are served meanwhile."""
    from node_plugin.server.dispatch import node_plugin_handler  # noqa: PLC0415

    def network(name: str) -> bytes:
        ipam = {"type": "cniwarden-host-local", "subnet": "10.85.0.0/24"}
        config = {"cniVersion": "1.1.0", "name": name, "type": "cniwarden-host-local"}
        return json.dumps({**config, "ipam": {**ipam, "dataDir": str(workdir / "ipam")}}).encode()

    start_server(node_plugin_handler(), workers=2, request_timeout=20)
    locked = workdir / "ipam" / "locked"
    locked.mkdir(parents=True)
    hold = "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
    hold += "fcntl.flock(fd,fcntl.LOCK_EX);print('held',flush=True);time.sleep(120)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(locked / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            stuck = pool.submit(
                shim.run, "STATUS", stdin=network("locked"), plugin="cniwarden-host-local"
            )
            other = shim.run("STATUS", stdin=network("free"), plugin="cniwarden-host-local")
            assert other.code == 0, other.stdout
            answer = stuck.result()
            waited = time.monotonic() - started
        assert answer.error_code == 5, answer.stdout
        error = json.loads(answer.stdout)
        assert "is locked by another process for more than 5s" in error["msg"]
        assert error["details"] == f"held by pid {holder.pid}"
        assert waited < 15, "answered by the lock's deadline, not the request's (20 s)"
    finally:
        holder.kill()
        holder.wait()
