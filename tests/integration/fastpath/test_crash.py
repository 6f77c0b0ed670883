"""Killing the cni-server in the middle of a burst of ADDs and DELs loses nothing.

The server, the shims and the bridge all live in a namespace the test owns (the "node"),
with one sandbox namespace per pod. After a SIGKILL mid-burst and a restart, and after the
runtime did what runtimes do (DEL every pod whose ADD failed), the lease store, the links
and GC must agree: every pod that got its network still has its address and its veth, and
nothing else holds an address or a link, including the veth pairs DEL left for the
server's reaper (tombstones).

The kill is deterministic: the test harness's server stops for ever at a named point of
one request (devtools.cniserver_harness --pause-at), the test sees it reported in the
handler, and kills the server then; every request still in the handler is cut short.
"""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fastpath.conftest import Node
from tests.integration.plugin.kernel import (
    Netns,
    netns_factory,
    tombstones,
    unique,
    veths,
    wait_reaped,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

PODS = 24
ESTABLISHED = 10  # pods attached before the burst; the burst deletes some of them
DELETED_IN_BURST = 6


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwfp-") as make:
        yield [make() for _ in range(PODS)]


def leases(store: Path) -> dict[str, str]:
    """address -> container id, from the host-local store layout."""
    return {
        p.name: p.read_bytes().decode().split("\r\n")[0]
        for p in store.iterdir()
        if p.name[0].isdigit() or ":" in p.name
    }


# Where the server stops (for ever, devtools.cniserver_harness --pause-at) to be killed:
# the N-th call since it started, the established pods' ADDs included. The kill then
# happens while the server reports that request (and whatever else runs) in its handler,
# not after some number of answers, which a fast or a slow machine shifts.
KILL_POINTS = {
    "ADD with its lease written": f"node_plugin.ipam.store:Store.reserve:after:{ESTABLISHED + 4}",
    "ADD with its veth created": f"node_plugin.kernel.netlink:create_veth:after:{ESTABLISHED + 8}",
    "DEL with the pair buried": "node_plugin.kernel.tombstones:bury:after:3",
}


@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_killing_the_server_mid_burst_loses_no_lease_and_leaks_nothing(
    node: Node, pods: list[Netns], workdir: Path, kill_point: str
) -> None:
    network = unique("crash")
    config = {
        "cniVersion": "1.1.0",
        "name": network,
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.79.0.0/24",
            "dataDir": str(workdir / "ipam"),
        },
    }
    store = workdir / "ipam" / network
    node.start_server(pause_at=[KILL_POINTS[kill_point]])
    results: dict[str, dict[str, Any]] = {}

    def add(i: int) -> tuple[str, subprocess.CompletedProcess[bytes]]:
        run = node.cni("ADD", config, pods[i], f"pod{i}")
        if run.returncode == 0:
            results[f"pod{i}"] = json.loads(run.stdout)
        return "ADD", run

    def delete(i: int) -> tuple[str, subprocess.CompletedProcess[bytes]]:
        prev = {**config, "prevResult": results[f"pod{i}"]}
        return "DEL", node.cni("DEL", prev, pods[i], f"pod{i}")

    for i in range(ESTABLISHED):
        assert add(i)[1].returncode == 0

    # The burst: new pods come while old ones go; the server dies in the middle of it.
    burst = [(add, i) for i in range(ESTABLISHED, PODS)] + [
        (delete, i) for i in range(DELETED_IN_BURST)
    ]
    random.Random(7).shuffle(burst)
    outcomes: dict[str, tuple[str, subprocess.CompletedProcess[bytes]]] = {}
    with ThreadPoolExecutor(12) as pool:
        futures = {pool.submit(fn, i): f"pod{i}" for fn, i in burst}
        node.wait_paused()
        assert node.in_handler(), "the server reports the paused request in its handler"
        node.kill_server()
        for future in as_completed(futures):
            outcomes[futures[future]] = future.result()
    # Whatever was in the handler when the server died (it never left it) was cut short.
    in_flight = node.in_handler()
    interrupted = [
        pod
        for pod, (verb, run) in outcomes.items()
        if b"closed the connection" in run.stdout + run.stderr
    ]
    assert interrupted, "the kill hit no request in flight: the test proved nothing"
    assert {(verb, pod) for pod, (verb, _) in outcomes.items() if pod in interrupted} >= set(
        in_flight
    ), "every request the server reported in flight was cut short"
    for pod, (verb, run) in outcomes.items():
        if verb == "DEL":
            assert run.returncode == 0, f"DEL of {pod} failed: {run.stdout!r}"
        else:
            assert run.returncode == 0 or json.loads(run.stdout)["code"] == 11, run.stdout

    # The killed server's lock died with it: its directory holds the socket it left and
    # nothing else (an uninstall after such a kill must find a clean node).
    assert sorted(p.name for p in node.shim.socket_path.parent.iterdir()) == [
        node.shim.socket_path.name
    ]
    # Back up: the queued DELs run first; then the runtime DELs every pod whose ADD failed.
    node.start_server()
    assert node.shim.queued() == []
    # Pairs buried by DELs the reaper had not finished when the server died, and by the
    # replayed DELs, are unregistered before the restarted server serves anything.
    assert tombstones(node.host) == []
    failed_adds = [
        pod for pod, (verb, run) in outcomes.items() if verb == "ADD" and run.returncode != 0
    ]
    for pod in failed_adds:
        i = int(pod[3:])
        run = node.cni("DEL", config, pods[i], pod)
        assert run.returncode == 0, run.stdout

    deleted = {f"pod{i}" for i in range(DELETED_IN_BURST)}
    kept = {pod: result for pod, result in results.items() if pod not in deleted}
    assert len(kept) == PODS - DELETED_IN_BURST - len(failed_adds)

    def assert_exactly_the_kept_pods() -> None:
        wait_reaped(node.host)
        held = leases(store)
        assert sorted(held.values()) == sorted(kept), "a lease was lost or leaked"
        for pod, result in kept.items():
            address = result["ips"][0]["address"]
            assert held[address.split("/")[0]] == pod
            sandbox = pods[int(pod[3:])]
            assert sandbox.addrs("eth0") == [address], f"{pod} lost its address"
        for i, sandbox in enumerate(pods):
            if f"pod{i}" not in kept:
                assert sandbox.link("eth0") is None, f"pod{i} kept a leaked interface"
        assert len(veths(node.host)) == len(kept), "leaked or missing host veths"

    assert_exactly_the_kept_pods()
    # GC with the runtime's list of live attachments changes nothing: nothing was leaked.
    gc = {
        **config,
        "cni.dev/valid-attachments": [{"containerID": p, "ifname": "eth0"} for p in kept],
    }
    run = node.cni("GC", gc, None, "")
    assert run.returncode == 0, run.stdout
    assert_exactly_the_kept_pods()
