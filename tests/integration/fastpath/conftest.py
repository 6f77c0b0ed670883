"""Fixtures for the fast path: the built shim, in-process servers, scripted fake servers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from node_plugin.server.protocol import Reply, Request, decode_request
from node_plugin.server.server import CniServer, ServerConfig
from tests.integration.fastpath import shimbuild
from tests.integration.fastpath.shimbuild import ROOT
from tests.integration.plugin.kernel import Netns, create_netns, delete_netns


@pytest.fixture(scope="session")
def shim_dir() -> Path:
    return shimbuild.built_shim_dir()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short private directory: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cw-fp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class ShimRun:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def error_code(self) -> int:
        """The CNI error code on stdout; like the plugins, the shim exits 1 on any error."""
        assert self.code == 1, f"expected a failure, got {self.code}: {self.stdout!r}"
        code = json.loads(self.stdout)["code"]
        assert isinstance(code, int)
        return code


@dataclass
class ShimEnv:
    """Runs the shim against one socket and one DEL queue."""

    shim_dir: Path
    socket_path: Path
    queue: Path

    def run(
        self,
        command: str,
        stdin: bytes = b'{"cniVersion":"1.1.0","name":"net"}',
        plugin: str = "cniwarden-bridge",
        extra_env: Mapping[str, str] | None = None,
        timeout: float = 20,
        user: int | None = None,
    ) -> ShimRun:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "ctr1",
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": "/var/run/netns/none",
            "CNI_PATH": "/opt/cni/bin",
            "CNIWARDEN_SOCKET": str(self.socket_path),
            "CNIWARDEN_DEL_QUEUE": str(self.queue),
            **(extra_env or {}),
        }
        argv = [str(self.shim_dir / plugin)]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
        proc = subprocess.run(
            argv, input=stdin, env=env, capture_output=True, timeout=timeout, check=False
        )
        return ShimRun(proc.returncode, proc.stdout, proc.stderr)

    def queued(self) -> list[Path]:
        if not self.queue.exists():
            return []
        return sorted(p for p in self.queue.iterdir() if p.name.startswith("del-"))

    def queued_container_ids(self) -> list[str]:
        """The container IDs of the queued DELs; a file the replay removes meanwhile is gone."""
        ids = []
        for path in self.queued():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            ids.append(decode_request(data).env["CNI_CONTAINERID"])
        return ids


@pytest.fixture
def shim(shim_dir: Path, workdir: Path) -> ShimEnv:
    return ShimEnv(shim_dir, workdir / "run" / "cni.sock", workdir / "queue")


ServerFactory = Callable[..., CniServer]


@pytest.fixture
def start_server(shim: ShimEnv) -> Iterator[ServerFactory]:
    """Starts in-process servers on the shim's socket; all are stopped at teardown."""
    servers: list[CniServer] = []

    def start(handler: Callable[[Request], Reply], **overrides: object) -> CniServer:
        settings: dict[str, object] = {
            "socket_path": shim.socket_path,
            "del_queue": shim.queue,
            **overrides,
        }
        server = CniServer(handler, ServerConfig(**settings))  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=5)


@dataclass
class Node:
    """The test's stand-in for a node: its netns, the server in it, the shims' settings."""

    host: Netns
    shim: ShimEnv
    work: Path
    server: subprocess.Popen[bytes] | None = None

    def start_server(
        self, *options: str, hold_tombstones: bool = False, pause_at: Sequence[str] = ()
    ) -> None:
        """The product's server; with `hold_tombstones` or `pause_at`, the test harness's
        (the same server with a reaper that never unregisters, or stopping for ever at
        the given points, see devtools.cniserver_harness), which also writes
        `self.events_path`."""
        log = self.work / "server.log"
        mark = log.stat().st_size if log.exists() else 0
        harness = hold_tombstones or bool(pause_at)
        entry = "devtools.cniserver_harness" if harness else "node_plugin.server"
        argv = ["nsenter", f"--net={self.host.path}", sys.executable, "-m", entry]
        argv += ["--socket", str(self.shim.socket_path), "--del-queue", str(self.shim.queue)]
        argv += options
        if hold_tombstones:
            argv += ["--hold-tombstones"]
        if harness:
            self.events_path.unlink(missing_ok=True)
            argv += ["--events", str(self.events_path)]
        for point in pause_at:
            argv += ["--pause-at", point]
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}"}
        with log.open("ab") as out:
            self.server = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while "serving CNI requests" not in log.read_bytes()[mark:].decode(errors="replace"):
            assert self.server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    @property
    def events_path(self) -> Path:
        return self.work / "server-events.jsonl"

    def events(self) -> list[dict[str, Any]]:
        """What the harness server reported: requests in and out of the handler, pauses."""
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def in_handler(self) -> list[tuple[str, str]]:
        """(verb, container) of the requests the server reports inside its handler."""
        inside: list[tuple[str, str]] = []
        for event in self.events():
            key = (event.get("command", ""), event.get("container", ""))
            if event["event"] == "start":
                inside.append(key)
            elif event["event"] == "end":
                inside.remove(key)
        return inside

    def wait_paused(self, timeout: float = 60) -> dict[str, Any]:
        """The harness's "paused" event, once its server stopped at its pause point."""
        deadline = time.monotonic() + timeout
        while True:
            paused = [e for e in self.events() if e["event"] == "paused"]
            if paused:
                return paused[0]
            assert self.server is not None and self.server.poll() is None, "server died"
            assert time.monotonic() < deadline, "the server never reached its pause point"
            time.sleep(0.01)

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def cni(
        self,
        command: str,
        config: dict[str, Any],
        pod: Netns | None,
        container: str,
        ifname: str = "eth0",
        cni_path: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": pod.path if pod else "",
            "CNI_IFNAME": ifname if pod else "",
            "CNI_PATH": cni_path or str(self.shim.shim_dir),
            "CNIWARDEN_SOCKET": str(self.shim.socket_path),
            "CNIWARDEN_DEL_QUEUE": str(self.shim.queue),
        }
        argv = ["nsenter", f"--net={self.host.path}", str(self.shim.shim_dir / config["type"])]
        return subprocess.run(
            argv,
            input=json.dumps(config).encode(),
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )


@pytest.fixture
def node(shim: ShimEnv, workdir: Path) -> Iterator[Node]:
    host = create_netns("cwfh-")
    the_node = Node(host, shim, workdir)
    try:
        host.exec("ip", "link", "set", "lo", "up")
        yield the_node
    finally:
        the_node.stop_server()
        delete_netns(host)


class FakeServer:
    """A raw Unix socket server that misbehaves on purpose, one scripted connection at a time."""

    def __init__(self, path: Path, script: Callable[[socket.socket], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.script = script
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.script(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def fake_server(shim: ShimEnv) -> Iterator[Callable[[Callable[[socket.socket], None]], FakeServer]]:
    fakes: list[FakeServer] = []

    def start(script: Callable[[socket.socket], None]) -> FakeServer:
        fake = FakeServer(shim.socket_path, script)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.close()


def read_whole_request(conn: socket.socket) -> bytes:
    """Reads until the shim half-closes its side (it does after sending the request)."""
    conn.settimeout(5)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
