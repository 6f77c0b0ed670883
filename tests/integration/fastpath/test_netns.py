"""The server works in the network namespace the shim was exec'd in, like an exec'd plugin."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from node_plugin.server.protocol import Reply, Request
from tests.integration.fastpath.conftest import ServerFactory, ShimEnv

pytestmark = pytest.mark.root


@pytest.fixture
def netns_name() -> Iterator[str]:
    name = f"cwfp-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def where_am_i(request: Request) -> Reply:
    """Reports the worker thread's netns and, on ADD, creates a bridge there."""
    if request.command == "ADD":
        name = request.env["CNI_IFNAME"]
        subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    inode = os.stat("/proc/thread-self/ns/net").st_ino
    return Reply(0, json.dumps({"netns_inode": inode}).encode())


def test_requests_run_in_the_callers_netns_and_workers_come_back(
    shim: ShimEnv, start_server: ServerFactory, netns_name: str
) -> None:
    start_server(where_am_i, workers=1)
    ifname = f"cwd{secrets.token_hex(4)}"
    caller_inode = os.stat(f"/run/netns/{netns_name}").st_ino
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_IFNAME": ifname,
        "CNIWARDEN_SOCKET": str(shim.socket_path),
        "CNIWARDEN_DEL_QUEUE": str(shim.queue),
    }
    shim_path = str(shim.shim_dir / "cniwarden-bridge")
    proc = subprocess.run(
        ["ip", "netns", "exec", netns_name, shim_path],
        env=env,
        input=b"{}",
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["netns_inode"] == caller_inode
    links = subprocess.run(
        ["ip", "-n", netns_name, "-j", "link", "show", ifname], capture_output=True, check=False
    )
    assert links.returncode == 0, "the link was created in the caller's namespace"
    root_links = subprocess.run(["ip", "link", "show", ifname], capture_output=True, check=False)
    assert root_links.returncode != 0, "and not in the server's"

    # The one worker went back home: a request from the server's namespace runs there.
    run = shim.run("CHECK")
    assert run.code == 0
    assert json.loads(run.stdout)["netns_inode"] == os.stat("/proc/self/ns/net").st_ino
