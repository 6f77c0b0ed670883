"""A delegated IPAM plugin that hangs, through the shim and the resident server.

The server kills it before the request's deadline and answers code 132 naming it; while
it hangs, its attachment's queued DEL waits and every other pod is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from node_plugin.server.delqueue import DelQueue
from node_plugin.server.protocol import Request
from tests.integration.fastpath.conftest import Node
from tests.integration.plugin import hanging
from tests.integration.plugin.kernel import Netns, netns_factory, unique, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwhg-") as make:
        yield [make() for _ in range(7)]


def networks(workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One network whose IPAM is the hanging plugin, one that works."""
    hung = {
        "cniVersion": "1.1.0",
        "name": unique("hang"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "ipam": {"type": "hang-ipam"},
    }
    fine = {
        "cniVersion": "1.1.0",
        "name": unique("fine"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.83.0.0/24",
            "dataDir": str(workdir / "ipam"),
        },
    }
    return hung, fine


@contextlib.contextmanager
def _killing(pids: Path) -> Iterator[None]:
    try:
        yield
    finally:
        hanging.kill_all(pids)


def error(run: Any) -> dict[str, Any]:
    assert run.returncode == 1, run.stdout
    body: dict[str, Any] = json.loads(run.stdout)
    return body


def test_the_server_kills_a_hanging_delegate_before_the_deadline(
    node: Node, workdir: Path, pods: list[Netns]
) -> None:
    node.start_server("--request-timeout", "4")
    pids = workdir / "pids"
    delegates = workdir / "delegates"
    hanging.install(delegates, "hang-ipam", pids)
    hung, _fine = networks(workdir)
    path = f"{delegates}:{node.shim.shim_dir}"
    with _killing(pids):
        run = node.cni("ADD", hung, pods[0], "stuck", cni_path=path)
        assert len(hanging.started(pids)) == 2
        wait_until(
            lambda: not any(hanging.running(pid, pids) for pid in hanging.started(pids)),
            "the server to kill the delegate's process group",
        )
    # The server's watchdog would have answered 11 at the deadline: 132 came before it.
    answer = error(run)
    assert answer["code"] == 132, answer
    waited = re.match(r"IPAM plugin hang-ipam ADD did not answer within ([0-9.]+)s", answer["msg"])
    assert waited is not None, answer["msg"]
    assert 0 < float(waited.group(1)) < 4, "killed before the request's 4 s deadline"
    assert pods[0].link("eth0") is None, "the failed ADD was undone"
    assert node.shim.queued() == []


def test_a_hanging_delegate_holds_only_its_own_attachment(
    node: Node, workdir: Path, pods: list[Netns]
) -> None:
    """The audit's lock-up, for real: a hung IPAM plugin, the runtime's DEL for that pod
    queued, and ADDs for other pods through two workers, while the plugin still hangs."""
    node.start_server("--request-timeout", "60", "--workers", "2")
    pids = workdir / "pids"
    delegates = workdir / "delegates"
    hanging.install(delegates, "hang-ipam", pids)
    hung, fine = networks(workdir)
    path = f"{delegates}:{node.shim.shim_dir}"
    with ThreadPoolExecutor(1) as pool, _killing(pids):
        stuck = pool.submit(node.cni, "ADD", hung, pods[0], "stuck", cni_path=path)
        wait_until(lambda: len(hanging.started(pids)) == 2, "the IPAM plugin to hang")
        env = {
            "CNI_COMMAND": "DEL",
            "CNI_CONTAINERID": "stuck",
            "CNI_IFNAME": "eth0",
            "CNI_NETNS": pods[0].path,
            "CNI_PATH": path,
        }
        DelQueue(node.shim.queue).enqueue(
            Request("cniwarden-bridge", env, json.dumps(hung).encode())
        )
        for i, pod in enumerate(pods[1:], start=1):
            run = node.cni("ADD", fine, pod, f"pod{i}")
            assert run.returncode == 0, run.stdout
        delegate = hanging.started(pids)[0]
        assert hanging.running(delegate, pids), "the other pods were served while it hung"
        assert len(node.shim.queued()) == 1, "its DEL waits for the attachment"
        os.killpg(delegate, signal.SIGKILL)  # it dies: the stuck ADD fails, the DEL can run
        assert error(stuck.result())["code"] == 131
    wait_until(lambda: node.shim.queued() == [], "the queued DEL to be replayed", timeout=60)
    assert pods[0].link("eth0") is None
