"""CNI_NETNS that is no sandbox: a FIFO (issue 11, item 2) and the node's own namespace
(item 13), through the standalone plugin and through the shim and the resident server.

The node is a namespace the test owns; the server runs in it (a 2-worker server, as in
the review), and so does every plugin exec.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fastpath.conftest import Node
from tests.integration.plugin.kernel import Netns, netns_factory, unique

pytestmark = pytest.mark.root

STANDALONE = Path(sys.executable).parent


@pytest.fixture
def fifo(workdir: Path) -> Iterator[Path]:
    path = workdir / "netns-fifo"
    os.mkfifo(path)
    try:
        yield path
    finally:
        # A plugin still blocked opening it (the bug) gets its writer and ends.
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        os.close(fd)


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwsb-") as make:
        yield [make() for _ in range(2)]


def network(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": unique("sbx"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.84.0.0/24",
            "dataDir": str(workdir / "ipam"),
        },
    }


def standalone(node: Node, command: str, config: dict[str, Any], netns: str, ifname: str) -> Any:
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "ctr",
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(STANDALONE),
    }
    argv = ["nsenter", f"--net={node.host.path}", str(STANDALONE / config["type"])]
    return subprocess.run(
        argv,
        input=json.dumps(config).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def through_shim(node: Node, command: str, config: dict[str, Any], netns: str, ifname: str) -> Any:
    env = {
        "PATH": os.environ["PATH"],
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "ctr",
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(node.shim.shim_dir),
        "CNIWARDEN_SOCKET": str(node.shim.socket_path),
        "CNIWARDEN_DEL_QUEUE": str(node.shim.queue),
        "CNIWARDEN_TIMEOUT_MS": "20000",
    }
    argv = ["nsenter", f"--net={node.host.path}", str(node.shim.shim_dir / config["type"])]
    return subprocess.run(
        argv,
        input=json.dumps(config).encode(),
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def code(run: Any) -> int:
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    value = json.loads(run.stdout)["code"]
    assert isinstance(value, int)
    return value


def test_a_fifo_netns_is_refused_at_once_and_costs_no_worker(
    node: Node, workdir: Path, fifo: Path, pods: list[Netns]
) -> None:
    """The review: two ADDs with CNI_NETNS at a FIFO blocked both workers of a 2-worker
    server in open(2) for good, an unrelated STATUS waited, and so did everything else."""
    node.start_server("--workers", "2", "--request-timeout", "5")
    config = network(workdir)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        adds = list(
            pool.map(lambda _: through_shim(node, "ADD", config, str(fifo), "eth0"), [0, 1])
        )
    for run in adds:
        assert code(run) == 121, run.stdout
        assert "unknown FS magic" in json.loads(run.stdout)["details"]
    assert time.monotonic() - started < 5, "answered before the request deadline, not by it"
    # CHECK is refused the same way; DEL has nothing to clean in a FIFO and goes on.
    assert code(through_shim(node, "CHECK", config, str(fifo), "eth0")) == 121
    assert through_shim(node, "DEL", config, str(fifo), "eth0").returncode == 0
    # Both workers are free: a real pod gets its network.
    run = through_shim(node, "ADD", config, pods[0].path, "eth0")
    assert run.returncode == 0, run.stdout
    status = through_shim(node, "STATUS", config, "", "")
    assert status.returncode == 0, status.stdout
    # The standalone plugin answers the same, at once.
    assert code(standalone(node, "ADD", config, str(fifo), "eth1")) == 121


@pytest.mark.parametrize("path", ["standalone", "shim+server"])
@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_the_nodes_own_namespace_is_refused_before_anything_is_touched(
    node: Node, workdir: Path, path: str, command: str
) -> None:
    """DEL with CNI_NETNS set to the node's own namespace deleted the node's links (the
    reference does the same); ADD would plug the node itself into the bridge."""
    if path == "shim+server":
        node.start_server()
    plugin = standalone if path == "standalone" else through_shim
    node.host.exec("ip", "link", "add", "eth7", "type", "veth", "peer", "name", "eth7p")
    before = sorted(link["ifname"] for link in node.host.links())
    config = network(workdir)
    if command == "CHECK":
        config["prevResult"] = {"cniVersion": "1.1.0", "interfaces": [], "ips": []}
    run = plugin(node, command, config, node.host.path, "eth7")
    assert code(run) == 4, run.stdout
    answer = json.loads(run.stdout)
    assert "node's own network namespace" in answer["msg"] and command in answer["msg"]
    assert sorted(link["ifname"] for link in node.host.links()) == before
    assert not (workdir / "ipam").exists(), "no lease store was touched"
