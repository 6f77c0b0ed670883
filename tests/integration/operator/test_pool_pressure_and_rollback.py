"""On the real API server with fake nodes, each agent a real process on its own host
root: IPPoolPressure names the full node (with an Event on each transition) and
`kubectl get` shows the fullest node's usage; `cniwarden rollback` puts a kept
revision's spec back and the agents apply it like any edit."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.atomic import sha256_file

from devtools.localcluster import LocalCluster

from .conftest import ROOT, Fleet, running_fleet

pytestmark = [
    pytest.mark.cluster("fake-nodes"),
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/host-local").exists(), reason="containernetworking-plugins missing"
    ),
]
REFERENCE = Path("/usr/lib/cni")


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nodes = cluster.add_fake_nodes(2)
    with running_fleet(cluster, tmp_path_factory.mktemp("ops-fleet"), nodes) as running:
        yield running


def spec(subnet: str, **extra: Any) -> dict[str, Any]:
    return {
        "priority": 10,
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cwops0",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
            }
        ],
        "binaries": [
            {
                "name": n,
                "sha256": sha256_file(REFERENCE / n),
                "source": {"file": str(REFERENCE / n)},
            }
            for n in ("bridge", "host-local")
        ],
        **extra,
    }


def events(fleet: Fleet, name: str, reason: str) -> list[dict[str, Any]]:
    listing = json.loads(
        fleet.cluster.kubectl(
            "get", "events", "-n", "default", "-o", "json",
            "--field-selector", f"involvedObject.name={name},reason={reason}",
        ).stdout
    )  # fmt: skip
    items: list[dict[str, Any]] = listing["items"]
    return items


def test_ip_pool_pressure_names_the_full_node(fleet: Fleet) -> None:
    name = fleet.name("pressure")
    fleet.apply(name, spec("10.231.0.0/29", ipam={"pressureThreshold": 60}))
    fleet.wait(lambda: fleet.ready(name), "network Ready")
    assert fleet.condition(name, "IPPoolPressure")["status"] == "False"
    full, calm = fleet.nodes[0], fleet.nodes[1]
    store = fleet.roots[full] / "var/lib/cni/networks" / name
    store.mkdir(parents=True, exist_ok=True)
    leased = [str(ipaddress.IPv4Address("10.231.0.2") + i) for i in range(3)]  # 3 of 5: 60 %
    for i, ip in enumerate(leased):
        (store / ip).write_text(f"c{i}\r\neth0")
    pressed = fleet.wait(lambda: fleet.when(name, "IPPoolPressure"), "IPPoolPressure True")
    assert f"{full}: 3/5 (60%)" in pressed["message"] and calm not in pressed["message"]
    status = fleet.network(name)["status"]
    assert status["poolUsage"] == f"60% ({full})"
    row = fleet.cluster.kubectl("get", "cninetwork", name, "--no-headers").stdout
    assert f"60% ({full})" in row
    fleet.wait(lambda: events(fleet, name, "IPPoolPressure"), "the IPPoolPressure Event")
    for ip in leased:
        (store / ip).unlink()
    fleet.wait(lambda: fleet.when(name, "IPPoolPressure", "False"), "pressure relieved")
    fleet.wait(lambda: events(fleet, name, "IPPoolPressureRelieved"), "the relief Event")
    fleet.delete(name)


def test_rollback_puts_a_kept_revision_back_through_the_gate(fleet: Fleet) -> None:
    name = fleet.name("rollback")
    conf = fleet.conf_dir(fleet.nodes[0]) / f"10-{name}.conflist"
    fleet.apply(name, spec("10.232.0.0/24"))
    fleet.wait(lambda: fleet.ready(name), "first spec Ready")
    fleet.wait(lambda: fleet.network(name)["status"].get("revision") == 1, "revision 1")
    fleet.apply(name, spec("10.233.0.0/24"))
    fleet.wait(lambda: b"10.233.0.0/24" in conf.read_bytes(), "second spec on the node")
    fleet.wait(lambda: fleet.network(name)["status"].get("revision") == 2, "revision 2")

    env = {**os.environ, "KUBECONFIG": str(fleet.cluster.kubeconfig)}
    command = [sys.executable, "-m", "cni_operator.cli", "rollback", name]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "revision 2 -> revision 1" in done.stdout
    fleet.wait(lambda: b"10.232.0.0/24" in conf.read_bytes(), "the rollback on the node")
    fleet.wait(lambda: fleet.ready(name), "Ready after the rollback")
    fleet.wait(lambda: fleet.network(name)["status"].get("revision") == 3, "revision 3")
    network = fleet.network(name)
    assert network["metadata"]["generation"] == 3
    assert [r["revision"] for r in network["status"]["revisions"]] == [1, 2, 3]
    missing = subprocess.run(
        [*command, "--to-revision", "9"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 1 and "kept revisions: 1, 2, 3" in missing.stderr
    fleet.delete(name)
