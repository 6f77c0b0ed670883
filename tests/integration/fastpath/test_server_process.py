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

# The shipped entry points run node_plugin and nothing else; the tests that need a
# recording handler run the same server through the test harness.
ENTRY_POINTS = {
    "python -m": [sys.executable, "-m", "node_plugin.server"],
    "cniwarden cni-server": [str(Path(sys.executable).parent / "cniwarden"), "cni-server"],
}
HARNESS = [sys.executable, "-m", "devtools.cniserver_harness"]


def spawn_server(
    shim: ShimEnv, log: Path, delay: float = 0, entry: str | None = None
) -> subprocess.Popen[str]:
    """`entry` None: the harness with devtools.fake_handlers:recording logging to `log`;
    else one of the product's ENTRY_POINTS, with the real plugins."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}",
        "CNIWARDEN_TEST_LOG": str(log),
        "CNIWARDEN_TEST_STARTED": str(started_log(log)),
        "CNIWARDEN_TEST_DELAY": str(delay),
    }
    argv = [*(ENTRY_POINTS[entry] if entry else HARNESS), "--socket", str(shim.socket_path)]
    argv += ["--del-queue", str(shim.queue)]
    if entry is None:
        argv += ["--handler", "devtools.fake_handlers:recording"]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    # Ready = it logged that it serves (the socket file alone may be a dead server's).
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "serving CNI requests" in line:
            threading.Thread(target=_keep_reading, args=(proc, log), daemon=True).start()
            return proc
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(seen))


def _keep_reading(proc: subprocess.Popen[str], log: Path) -> None:
    """The server's own log (stderr), kept next to the handler's log."""
    assert proc.stderr is not None
    with server_log(log).open("a") as out:
        for line in proc.stderr:
            out.write(line)
            out.flush()


def server_log(log: Path) -> Path:
    return log.with_name(log.name + ".server")


def started_log(log: Path) -> Path:
    return log.with_name(log.name + ".started")


def logged(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [(line["command"], line["container"]) for line in lines]


def test_sigterm_stops_cleanly(shim: ShimEnv, workdir: Path) -> None:
    log = workdir / "log"
    proc = spawn_server(shim, log)
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


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_the_shipped_entry_points_serve_the_plugins_and_stop_cleanly(
    shim: ShimEnv, workdir: Path, entry: str
) -> None:
    """Both shipped entry points: the real plugins answer (a GC of a store that does not
    exist yet succeeds), SIGTERM stops the server, and the shim then answers for it."""
    log = workdir / "log"
    config = {
        "cniVersion": "1.1.0",
        "name": "net",
        "type": "cniwarden-host-local",
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.99.0.0/24",
            "dataDir": str(workdir / "ipam"),
        },
    }
    proc = spawn_server(shim, log, entry=entry)
    try:
        gc = shim.run("GC", stdin=json.dumps(config).encode(), plugin="cniwarden-host-local")
        assert gc.code == 0, gc.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not shim.socket_path.exists()
        assert shim.run("ADD").error_code == 11
    finally:
        proc.kill()
        proc.wait()
    wait_until(
        lambda: server_log(log).exists() and "stopped" in server_log(log).read_text(),
        "the server's last log line",
    )
    served = [line for line in server_log(log).read_text().splitlines() if " -> " in line]
    assert len(served) == 1 and "cniwarden-host-local GC " in served[0], served
    assert logged(log) == [], "the shipped server ran no fake handler"


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
