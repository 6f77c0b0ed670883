"""The server as a process: signals, a crash mid-request, the queue across a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.fastpath.conftest import ShimEnv
from tests.integration.fastpath.shimbuild import ROOT
from tests.integration.plugin.kernel import wait_until

ENTRY_POINTS = {
    "python -m": [sys.executable, "-m", "node_plugin.server"],
    "cniwarden cni-server": [str(Path(sys.executable).parent / "cniwarden"), "cni-server"],
}


def spawn_server(
    shim: ShimEnv, log: Path, delay: float = 0, entry: str = "python -m"
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}",
        "CNIWARDEN_TEST_LOG": str(log),
        "CNIWARDEN_TEST_STARTED": str(started_log(log)),
        "CNIWARDEN_TEST_DELAY": str(delay),
    }
    argv = [*ENTRY_POINTS[entry], "--socket", str(shim.socket_path)]
    argv += ["--del-queue", str(shim.queue), "--handler"]
    argv += ["devtools.fake_handlers:recording"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    # Ready = it logged that it serves (the socket file alone may be a dead server's).
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "serving CNI requests" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(seen))


def started_log(log: Path) -> Path:
    return log.with_name(log.name + ".started")


def logged(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(line["command"], line["container"]) for line in lines]


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_sigterm_stops_cleanly(shim: ShimEnv, workdir: Path, entry: str) -> None:
    log = workdir / "log"
    proc = spawn_server(shim, log, entry=entry)
    try:
        assert shim.run("ADD").code == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not shim.socket_path.exists()
        assert shim.run("ADD").error_code == 11
    finally:
        proc.kill()
        proc.wait()
    assert logged(log) == [("ADD", "ctr1")]


def test_a_server_killed_mid_request_loses_no_del(shim: ShimEnv, workdir: Path) -> None:
    log = workdir / "log"
    # The handler takes far longer than the test: both requests are in it when it dies.
    proc = spawn_server(shim, log, delay=600)
    try:
        with ThreadPoolExecutor(2) as pool:
            add = pool.submit(shim.run, "ADD", extra_env={"CNI_CONTAINERID": "a"})
            dele = pool.submit(shim.run, "DEL", extra_env={"CNI_CONTAINERID": "d"})
            wait_until(
                lambda: sorted(logged(started_log(log))) == [("ADD", "a"), ("DEL", "d")],
                "both requests to be in the server's handler",
            )
            proc.kill()
            proc.wait()
            add_run, del_run = add.result(), dele.result()
    finally:
        proc.kill()
        proc.wait()
    assert add_run.error_code == 11
    assert "closed the connection" in json.loads(add_run.stdout)["msg"]
    assert del_run.code == 0
    assert len(shim.queued()) == 1
    assert logged(log) == []

    # While it is down, more DELs queue up; a restart replays them all, in order.
    assert shim.run("DEL", extra_env={"CNI_CONTAINERID": "d2"}).code == 0
    restarted = spawn_server(shim, log)
    try:
        assert logged(log) == [("DEL", "d"), ("DEL", "d2")], "replayed before serving"
        assert shim.queued() == []
        assert shim.run("ADD", extra_env={"CNI_CONTAINERID": "a"}).code == 0
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=15)
    assert logged(log)[-1] == ("ADD", "a")
