"""kill -9 of the cni-server at named points of ADD, DEL and GC: nothing is lost or leaked.

For each kill point: pods are attached through a plain server, which then stops; the test
harness's server (devtools.cniserver_harness --pause-at) runs one operation and stops for
ever at the point, and the test kills it there (SIGKILL). A plain server comes back (it
replays a DEL the shim queued), the runtime does what runtimes do (DEL a pod whose ADD
failed, retry a GC that failed), and a GC with the live attachments runs as runtimes run
it periodically. Then, whatever the point:

- no partial file: every lease file holds `<container>\\r\\n<ifname>` of a live pod, and no
  temp file is left;
- no lost or doubled lease: exactly the live pods hold one address each, the one their
  ADD answered;
- no leaked link or rule: one host veth per live pod, no tombstone, no interface in a
  dead pod's sandbox, and exactly the live pods' masquerade chains.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from node_plugin.bridge import masq_names
from tests.integration.fastpath.conftest import Node
from tests.integration.plugin.kernel import (
    Netns,
    delete_netns,
    netns_factory,
    tombstones,
    unique,
    veths,
    wait_reaped,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

ADD_POINTS = [
    "node_plugin.ipam.store:Store._write_temp:after:1",  # the lease's temp file written
    "node_plugin.ipam.store:Store.reserve:after:1",  # the lease in place
    "node_plugin.kernel.netlink:create_veth:after:1",  # the veth pair created
    "node_plugin.bridge.plugin:_configure_sandbox:after:1",  # addresses and routes set
    "node_plugin.bridge.masq:setup:after:1",  # the masquerade chain installed
    "node_plugin.bridge.plugin:add:after:1",  # all done, not answered
]
DEL_POINTS = [
    "node_plugin.kernel.tombstones:bury:after:1",  # the pair out of service, lease held
    "node_plugin.ipam.store:Store.release:after:1",  # the lease released
    "node_plugin.bridge.masq:teardown:after:1",  # the masquerade chain removed
    "node_plugin.bridge.plugin:delete:after:1",  # all done, not answered
]
GC_POINTS = [
    "node_plugin.ipam.store:Store.remove_temp_files:after:1",  # temp files gone
    "node_plugin.ipam.store:Store.release:after:1",  # one stale lease released
    "node_plugin.bridge.masq:gc:after:1",  # stale chains removed
    "node_plugin.bridge.plugin:gc:after:1",  # all done (tombstones too), not answered
]
CASES = (
    [("ADD", p) for p in ADD_POINTS]
    + [("DEL", p) for p in DEL_POINTS]
    + [("GC", p) for p in GC_POINTS]
)


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwfi-") as make:
        yield [make() for _ in range(4)]


def network(workdir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": unique("fault"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipMasq": True,
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.88.0.0/24",
            "dataDir": str(workdir / "ipam"),
        },
    }


def gc_config(config: dict[str, Any], live: set[str]) -> dict[str, Any]:
    keep = [{"containerID": pod, "ifname": "eth0"} for pod in sorted(live)]
    return {**config, "cni.dev/valid-attachments": keep}


def masq_chains(node: Node) -> set[str]:
    rules = node.host.exec("iptables", "-w", "-t", "nat", "-S")
    return {line.split()[1] for line in rules.splitlines() if line.startswith("-N CNI-")}


def assert_exactly(
    node: Node, workdir: Path, config: dict[str, Any], pods: list[Netns], live: dict[str, Any]
) -> None:
    """The node holds exactly the live pods' leases, links and rules, nothing partial."""
    wait_reaped(node.host)
    store = workdir / "ipam" / config["name"]
    files = sorted(p.name for p in store.iterdir())
    leases = {name: (store / name).read_bytes() for name in files if name[0].isdigit()}
    assert set(files) - set(leases) <= {"lock", "last_reserved_ip.0"}, f"left over: {files}"
    assert sorted(leases.values()) == sorted(f"{pod}\r\neth0".encode() for pod in live)
    for pod, result in live.items():
        address = result["ips"][0]["address"]
        assert leases[address.split("/")[0]] == f"{pod}\r\neth0".encode()
        assert pods[int(pod[3:])].addrs("eth0") == [address], f"{pod} lost its address"
    for i, sandbox in enumerate(pods):
        if f"pod{i}" not in live and sandbox.exists():
            assert [link["ifname"] for link in sandbox.links()] == ["lo"], f"pod{i} leaked"
    assert len(veths(node.host)) == len(live), "leaked or missing host veths"
    assert tombstones(node.host) == []
    expected = {masq_names.iptables_chain(config["name"], pod) for pod in live}
    assert masq_chains(node) == expected, "leaked or missing masquerade chains"


@pytest.mark.parametrize(
    ("verb", "point"), CASES, ids=[f"{v}-{p.split(':', 1)[1]}" for v, p in CASES]
)
def test_a_kill_at_any_point_loses_and_leaks_nothing(
    node: Node, workdir: Path, pods: list[Netns], verb: str, point: str
) -> None:
    config = network(workdir)
    live: dict[str, Any] = {}

    def add(i: int) -> subprocess.CompletedProcess[bytes]:
        run = node.cni("ADD", config, pods[i], f"pod{i}")
        if run.returncode == 0:
            live[f"pod{i}"] = json.loads(run.stdout)
        return run

    node.start_server(hold_tombstones=verb == "GC")
    for i in range(3):
        assert add(i).returncode == 0
    if verb == "GC":
        # Something for GC to collect: a pod whose sandbox is gone and that the runtime
        # forgot (its lease and chain stay), a DEL's tombstone, and a temp file of a
        # writer that was killed.
        live.pop("pod2")
        delete_netns(pods[2])
        gone = live.pop("pod0")
        assert node.cni("DEL", {**config, "prevResult": gone}, pods[0], "pod0").returncode == 0
        assert len(tombstones(node.host)) == 1
        store = workdir / "ipam" / config["name"]
        (store / ".cniwarden-killedwriter").write_bytes(b"pod9\r\n")
    node.stop_server()

    # For GC, the tombstone must still be there: GC unregisters it, not a sweep at start.
    node.start_server(pause_at=[point], hold_tombstones=verb == "GC")
    if verb == "GC":
        assert len(tombstones(node.host)) == 1
    operation: Callable[[], subprocess.CompletedProcess[bytes]]
    if verb == "ADD":
        operation = lambda: add(3)  # noqa: E731
    elif verb == "DEL":
        prev = {**config, "prevResult": live.pop("pod1")}
        operation = lambda: node.cni("DEL", prev, pods[1], "pod1")  # noqa: E731
    else:
        operation = lambda: node.cni("GC", gc_config(config, set(live)), None, "")  # noqa: E731
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(operation)
        assert node.wait_paused()["point"] == point
        assert node.in_handler() == [
            (verb, "pod3" if verb == "ADD" else "pod1" if verb == "DEL" else "")
        ]
        node.kill_server()
        cut = pending.result()
    assert b"closed the connection" in cut.stdout + cut.stderr, cut
    if verb == "DEL":
        assert cut.returncode == 0 and len(node.shim.queued()) == 1, "the DEL is queued"
    else:
        assert json.loads(cut.stdout)["code"] == 11, "the runtime is told to retry"
    assert "pod3" not in live

    node.start_server()  # replays the queued DEL, sweeps tombstones, serves
    assert node.shim.queued() == []
    if verb == "ADD":
        # The runtime never got a result: it DELs the attachment (no prevResult).
        run = node.cni("DEL", config, pods[3], "pod3")
        assert run.returncode == 0, run.stdout
    if verb == "GC":
        run = node.cni("GC", gc_config(config, set(live)), None, "")
        assert run.returncode == 0, run.stdout
    # What runtimes run from time to time; it must find nothing of the live pods to take.
    run = node.cni("GC", gc_config(config, set(live)), None, "")
    assert run.returncode == 0, run.stdout
    assert_exactly(node, workdir, config, pods, live)
