"""The readiness probe through the path the chart uses: the static shims in the bin dir
forward ADD, CHECK and DEL to the product's cni-server, which opens the probe's
scratch netns by path. With the server down the probe fails (the shim answers 11 to
the ADD) and still removes its netns; nothing is leased either way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cni_operator.node import cniprobe
from cni_operator.node.paths import HostPaths

from node_plugin.kernel import netns
from tests.integration.fastpath.conftest import Node, ShimEnv
from tests.threads import on_own_thread

pytestmark = [pytest.mark.root]


def probe_in(node: Node, paths: HostPaths, data: bytes) -> cniprobe.Outcome:
    """The probe as the agent runs it: in the node's netns (hostNetwork), on a thread."""

    def body() -> cniprobe.Outcome:
        with netns.entered(node.host.path):
            return cniprobe.probe(paths, "node-s", "10-s.conflist", data)

    return on_own_thread(body, 300, "the probe")


def test_probe_through_the_shim_and_the_server(
    node: Node, shim: ShimEnv, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNIWARDEN_SOCKET", str(shim.socket_path))
    monkeypatch.setenv("CNIWARDEN_DEL_QUEUE", str(shim.queue))
    node.start_server()
    paths = HostPaths(workdir / "host")
    paths.ensure()
    for name in ("cniwarden-bridge", "cniwarden-host-local"):
        shutil.copy2(shim.shim_dir / name, paths.bin_dir / name)
    leases = workdir / "leases"
    data = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "s",
            "plugins": [
                {
                    "type": "cniwarden-bridge",
                    "bridge": "cwps0",
                    "isGateway": True,
                    "ipam": {
                        "type": "cniwarden-host-local",
                        "subnet": "10.78.0.0/28",
                        "dataDir": str(leases),
                    },
                }
            ],
        }
    ).encode()

    got = probe_in(node, paths, data)
    assert got.ok, got.detail
    assert got.steps == ["ADD", "CHECK", "DEL"]
    server_log = (workdir / "server.log").read_text()
    for verb in ("ADD", "CHECK", "DEL"):  # the server names the container by its first 12
        assert f"cniwarden-bridge {verb} {got.container_id[:12]}/eth0 -> 0" in server_log
    assert not [p for p in (leases / "s").glob("[0-9]*")], "the probe's lease is released"
    assert list(cniprobe.netns_dir(paths).iterdir()) == []

    node.stop_server()
    down = probe_in(node, paths, data)
    assert not down.ok and "code 11" in down.detail, down.detail
    assert shim.queued_container_ids() == [down.container_id], "its DEL waits in the queue"
    assert list(cniprobe.netns_dir(paths).iterdir()) == [], "the netns is removed regardless"
