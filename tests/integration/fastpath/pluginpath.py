"""The "shim+server" way of running the plugins, for the plugin integration tests.

`build_shim_path(directory, request)` is registered in tests/integration/plugin/conftest.py's
PLUGIN_PATHS: every plugin integration and differential test then also runs with the
static shims talking to one resident `cni-server` for the whole session. The tests build
the environment of each exec from scratch, so the socket path reaches the shim through a
two-line sh wrapper; the real shim keeps the plugin's name, which is what it forwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.fastpath.shimbuild import ROOT, SHIM_NAMES, built_shim_dir


def start_session_server(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = work / "cni.sock"
    log = (work / "server.log").open("wb")
    argv = [sys.executable, "-m", "node_plugin.server", "--socket", str(sock)]
    argv += ["--del-queue", str(work / "del-queue"), "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}"}
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=log, stdout=log)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"cni-server did not start: {(work / 'server.log').read_text()}")
        time.sleep(0.05)
    return proc, sock


def build_shim_path(directory: Path, request: pytest.FixtureRequest) -> None:
    shims = built_shim_dir()
    work = Path(tempfile.mkdtemp(prefix="cw-srv-", dir="/tmp"))
    server, sock = start_session_server(work)

    def stop() -> None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    request.addfinalizer(stop)
    for name in SHIM_NAMES:
        wrapper = directory / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f"CNIWARDEN_SOCKET={sock} CNIWARDEN_DEL_QUEUE={work / 'del-queue'} "
            f'exec {shims / name} "$@"\n'
        )
        wrapper.chmod(0o755)
