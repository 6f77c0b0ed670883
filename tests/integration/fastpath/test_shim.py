"""The static shim, driven as a real executable against real and misbehaving servers."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools import fake_handlers as handlers
from node_plugin import api
from node_plugin.server.protocol import (
    MAGIC,
    Reply,
    decode_request,
    encode_reply,
)
from tests.integration.fastpath.conftest import (
    FakeServer,
    ServerFactory,
    ShimEnv,
    read_whole_request,
)

FakeFactory = Callable[[Callable[[socket.socket], None]], FakeServer]
CONFIG = b'{"cniVersion":"0.4.0","name":"net","prevResult":{"cniVersion":"1.0.0"}}'
# What a shim's timing may add to its deadline on a loaded 2-core machine (load average
# 15 included): bounds are "deadline + SLACK", never close to the deadline itself.
SLACK = 10.0


def cni_error(out: bytes) -> dict[str, object]:
    error = json.loads(out)
    assert isinstance(error, dict)
    assert {"cniVersion", "code", "msg"} <= set(error) <= {"cniVersion", "code", "msg", "details"}
    return error


# ---- without any server ----------------------------------------------------------


@pytest.mark.parametrize("plugin", ["cniwarden-bridge", "cniwarden-host-local"])
def test_version_is_answered_without_a_server(shim: ShimEnv, plugin: str) -> None:
    run = shim.run("VERSION", stdin=b"", plugin=plugin)
    assert run.code == 0, run.stderr
    info = json.loads(run.stdout)
    assert info["cniVersion"] == "1.1.0"
    assert "1.1.0" in info["supportedVersions"] and "0.4.0" in info["supportedVersions"]
    assert not shim.socket_path.exists()


@pytest.mark.parametrize("plugin", ["cniwarden-bridge", "cniwarden-host-local"])
def test_version_and_about_are_byte_for_byte_the_python_plugins(shim: ShimEnv, plugin: str) -> None:
    """The shim answers these itself, so it must not drift from node_plugin."""
    version = api.handle(api.CniRequest(plugin, {"CNI_COMMAND": "VERSION"}, b""))
    assert shim.run("VERSION", stdin=b"", plugin=plugin).stdout == version.stdout
    script = Path(sys.executable).parent / plugin
    standalone = subprocess.run(
        [script], env={"PATH": os.environ["PATH"]}, capture_output=True, check=False
    )
    about = shim.run("", stdin=b"", plugin=plugin)
    assert (about.code, about.stdout) == (0, b"")
    assert about.stderr == standalone.stderr
    assert standalone.stderr.startswith(f"CNI {plugin} plugin".encode())


def test_add_with_server_down_fails_fast_with_code_11(shim: ShimEnv) -> None:
    started = time.monotonic()
    # A two-minute deadline: failing fast means not waiting for it.
    run = shim.run("ADD", stdin=CONFIG, extra_env={"CNIWARDEN_TIMEOUT_MS": "120000"}, timeout=60)
    assert time.monotonic() - started < SLACK
    assert run.error_code == 11
    error = cni_error(run.stdout)
    assert error["code"] == 11
    assert error["cniVersion"] == "0.4.0", "the config's version, not prevResult's"
    assert "server is down" in str(error["msg"])
    assert str(shim.socket_path) in str(error["msg"])
    assert not shim.queued()


@pytest.mark.parametrize("command", ["CHECK", "GC"])
def test_other_verbs_with_server_down_are_try_again(shim: ShimEnv, command: str) -> None:
    run = shim.run(command)
    assert run.error_code == 11
    assert cni_error(run.stdout)["code"] == 11
    assert not shim.queued()


def test_status_with_server_down_is_not_available(shim: ShimEnv) -> None:
    run = shim.run("STATUS")
    assert run.error_code == 50
    error = cni_error(run.stdout)
    assert error["code"] == 50
    assert "server is down" in str(error["msg"])


def test_del_with_server_down_is_queued_durably_and_succeeds(shim: ShimEnv) -> None:
    stdin = CONFIG + b"\n\x00binary tail \xff"
    run = shim.run("DEL", stdin=stdin, extra_env={"NOT_CNI": "secret", "CNI_ARGS": "A=1;B=2"})
    assert run.code == 0, run.stdout
    assert run.stdout == b""
    assert b"DEL queued as" in run.stderr
    (entry,) = shim.queued()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert [p for p in shim.queue.iterdir() if p.name.startswith(".tmp")] == []
    request = decode_request(entry.read_bytes())
    assert request.plugin == "cniwarden-bridge"
    assert request.command == "DEL"
    assert request.stdin == stdin
    assert request.env["CNI_ARGS"] == "A=1;B=2"
    assert request.env["CNI_CONTAINERID"] == "ctr1"
    assert "NOT_CNI" not in request.env
    assert "CNIWARDEN_SOCKET" not in request.env


def test_queued_dels_keep_their_order(shim: ShimEnv) -> None:
    for i in range(5):
        assert shim.run("DEL", extra_env={"CNI_CONTAINERID": f"c{i}"}).code == 0
    containers = [decode_request(p.read_bytes()).env["CNI_CONTAINERID"] for p in shim.queued()]
    assert containers == [f"c{i}" for i in range(5)]


def test_del_fails_when_it_can_be_neither_delivered_nor_queued(
    shim: ShimEnv, workdir: Path
) -> None:
    blocker = workdir / "file"
    blocker.write_text("not a directory")
    run = shim.run("DEL", extra_env={"CNIWARDEN_DEL_QUEUE": str(blocker / "queue")})
    assert run.error_code == 11
    error = cni_error(run.stdout)
    assert "DEL queue" in str(error["details"])


def test_oversized_stdin_is_refused_before_contacting_the_server(shim: ShimEnv) -> None:
    run = shim.run("ADD", stdin=b" " * (4 << 20) + b"{}")
    assert run.error_code == 7
    assert "too large" in str(cni_error(run.stdout)["msg"])


def test_a_stdin_that_never_closes_does_not_hang_the_shim(shim: ShimEnv) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "DEL",
        "CNIWARDEN_SOCKET": str(shim.socket_path),
        "CNIWARDEN_DEL_QUEUE": str(shim.queue),
        "CNIWARDEN_TIMEOUT_MS": "300",
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [shim.shim_dir / "cniwarden-bridge"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b'{"cniVersion":')
        proc.stdin.flush()
        proc.wait(timeout=60)  # with stdin still open
        assert proc.stdout is not None
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
    assert time.monotonic() - started < 0.3 + SLACK
    assert proc.returncode == 1
    error = cni_error(out)
    assert error["code"] == 5
    assert "stdin" in str(error["msg"])


# ---- against the real server -------------------------------------------------------


@pytest.mark.parametrize("plugin", ["cniwarden-bridge", "cniwarden-host-local"])
def test_round_trip_forwards_cni_env_stdin_and_relays_the_reply(
    shim: ShimEnv, start_server: ServerFactory, plugin: str
) -> None:
    start_server(handlers.echo())
    run = shim.run(
        "ADD", stdin=CONFIG, plugin=plugin, extra_env={"CNI_ARGS": "EXIT=7", "HOME": "/x"}
    )
    assert run.code == 7, "the exit code is relayed as is"
    seen = json.loads(run.stdout)
    assert seen["plugin"] == plugin
    assert seen["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr1",
        "CNI_IFNAME": "eth0",
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": "EXIT=7",
    }
    assert seen["stdin_len"] == len(CONFIG)
    assert b"echo handler saw ADD" in run.stderr


def test_large_binary_payloads_survive_byte_for_byte(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    start_server(handlers.mirror())
    payload = os.urandom(3 << 20)
    run = shim.run("ADD", stdin=payload)
    assert run.code == 0
    assert run.stdout == payload


def test_del_answered_try_again_is_queued(shim: ShimEnv, start_server: ServerFactory) -> None:
    start_server(handlers.echo())
    run = shim.run("DEL", extra_env={"CNI_ARGS": "CODE=11"})
    assert run.code == 0
    assert len(shim.queued()) == 1


def test_del_answered_with_a_real_error_is_not_queued(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    start_server(handlers.echo())
    run = shim.run("DEL", extra_env={"CNI_ARGS": "CODE=7"})
    assert run.error_code == 7
    assert shim.queued() == []


# ---- against servers that misbehave -----------------------------------------------


def close_after_reading(conn: socket.socket) -> None:
    read_whole_request(conn)


def until_the_shim_hangs_up(conn: socket.socket) -> None:
    """Holds the connection open, unanswered, until the shim closes its end (it gives up
    at its deadline), however long a loaded machine makes that take."""
    waiter = select.poll()
    waiter.register(conn, select.POLLHUP)
    waiter.poll(60_000)


def never_answer(conn: socket.socket) -> None:
    read_whole_request(conn)
    until_the_shim_hangs_up(conn)


def half_a_reply(conn: socket.socket) -> None:
    read_whole_request(conn)
    conn.sendall(encode_reply(Reply(0, b'{"cniVersion":"1.1.0"}' * 10))[:30])


def garbage_reply(conn: socket.socket) -> None:
    read_whole_request(conn)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def oversized_reply(conn: socket.socket) -> None:
    read_whole_request(conn)
    conn.sendall(MAGIC + struct.pack(">II", 0, 17 << 20) + b"x" * 1000)


def close_before_reading(conn: socket.socket) -> None:
    conn.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (close_after_reading, "closed the connection before replying"),
        (half_a_reply, "closed the connection before replying"),
        (never_answer, "in time"),
        (garbage_reply, "unreadable reply"),
        (oversized_reply, "unreadable reply"),
        (close_before_reading, "closed the connection before replying"),
    ],
)
def test_a_broken_server_never_hangs_the_shim(
    shim: ShimEnv, fake_server: FakeFactory, script: Callable[[socket.socket], None], says: str
) -> None:
    fake = fake_server(script)
    timeout = {"CNIWARDEN_TIMEOUT_MS": "500"}
    started = time.monotonic()
    add = shim.run("ADD", stdin=CONFIG, extra_env=timeout)
    assert time.monotonic() - started < 0.5 + SLACK
    assert add.error_code == 11
    assert says in str(cni_error(add.stdout)["msg"])

    status = shim.run("STATUS", extra_env=timeout)
    assert status.error_code == 50

    dele = shim.run("DEL", stdin=CONFIG, extra_env=timeout)
    assert dele.code == 0
    (entry,) = shim.queued()
    assert decode_request(entry.read_bytes()).stdin == CONFIG
    assert fake.connections == 3


def test_a_large_request_to_a_server_that_stops_reading_times_out(
    shim: ShimEnv, fake_server: FakeFactory
) -> None:
    fake_server(until_the_shim_hangs_up)  # reads nothing
    started = time.monotonic()
    run = shim.run("ADD", stdin=b" " * (3 << 20), extra_env={"CNIWARDEN_TIMEOUT_MS": "500"})
    assert time.monotonic() - started < 0.5 + SLACK
    assert run.error_code == 11
    assert "in time" in str(cni_error(run.stdout)["msg"])


def test_a_full_listen_backlog_is_retried_until_the_deadline(shim: ShimEnv, workdir: Path) -> None:
    shim.socket_path.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(shim.socket_path))
    listener.listen(0)
    fillers = []
    try:
        # Fill the backlog with connections nobody accepts.
        for _ in range(4):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(str(shim.socket_path))
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        started = time.monotonic()
        run = shim.run("ADD", extra_env={"CNIWARDEN_TIMEOUT_MS": "400"})
        assert 0.3 < time.monotonic() - started < 0.4 + SLACK  # retried until the deadline
        assert run.error_code == 11
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
