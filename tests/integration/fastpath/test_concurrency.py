"""Real ADDs and DELs at the same time in one resident server (the thread-safety test).

The server, its shims and two bridges live in a namespace the test owns; every request
does real work (veth pairs, addresses, routes, the lease stores, tombstones), from more
clients than the server has workers, with ADDs and DELs of one network interleaved and
two networks side by side. Afterwards the kernel and the stores must say exactly what the
answers said.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fastpath.conftest import Node
from tests.integration.plugin.kernel import Netns, netns_factory, unique, veths, wait_reaped

pytestmark = [pytest.mark.root, pytest.mark.slow]

PODS = 24


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwcc-") as make:
        yield [make() for _ in range(PODS)]


def network(workdir: Path, subnet: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": unique("conc"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipam": {"type": "cniwarden-host-local", "subnet": subnet, "dataDir": str(workdir)},
    }


def leases(workdir: Path, config: dict[str, Any]) -> dict[str, str]:
    store = workdir / config["name"]
    if not store.exists():
        return {}
    return {
        p.name: p.read_bytes().decode().split("\r\n")[0]
        for p in store.iterdir()
        if p.name[0].isdigit()
    }


def test_concurrent_adds_and_dels_in_one_server(
    node: Node, workdir: Path, pods: list[Netns]
) -> None:
    node.start_server("--workers", "4")
    ipam = workdir / "ipam"
    nets = [network(ipam, "10.86.0.0/24"), network(ipam, "10.87.0.0/24")]
    results: dict[tuple[int, int], dict[str, Any]] = {}

    def add(net: int, i: int) -> None:
        run = node.cni("ADD", nets[net], pods[i], f"pod{i}", ifname=f"eth{net}")
        assert run.returncode == 0, run.stdout
        results[net, i] = json.loads(run.stdout)

    def delete(net: int, i: int) -> None:
        prev = {**nets[net], "prevResult": results[net, i]}
        run = node.cni("DEL", prev, pods[i], f"pod{i}", ifname=f"eth{net}")
        assert run.returncode == 0, run.stdout

    def run_all(jobs: list[tuple[Any, int, int]]) -> None:
        with ThreadPoolExecutor(12) as pool:  # three times the server's workers
            for future in [pool.submit(fn, net, i) for fn, net, i in jobs]:
                future.result()

    half = PODS // 2
    run_all([(add, net, i) for net in (0, 1) for i in range(half)])
    # The second half arrives while every other pod of the first half goes, both networks.
    gone = [(net, i) for net in (0, 1) for i in range(0, half, 2)]
    jobs = [(add, net, i) for net in (0, 1) for i in range(half, PODS)]
    jobs += [(delete, net, i) for net, i in gone]
    random.Random(11).shuffle(jobs)
    run_all(jobs)

    kept = {(net, i) for net in (0, 1) for i in range(PODS)} - set(gone)
    wait_reaped(node.host)
    for net, config in enumerate(nets):
        addresses = [results[n, i]["ips"][0]["address"] for n, i in results if n == net]
        assert len(set(addresses)) == PODS, "an address was handed out twice"
        held = leases(ipam, config)
        assert sorted(held.values()) == sorted(f"pod{i}" for n, i in kept if n == net)
        for n, i in kept:
            if n == net:
                address = results[n, i]["ips"][0]["address"]
                assert held[address.split("/")[0]] == f"pod{i}"
                assert pods[i].addrs(f"eth{net}") == [address]
    for net, i in gone:
        assert pods[i].link(f"eth{net}") is None
    assert len(veths(node.host)) == len(kept), "leaked or missing host veths"

    run_all([(delete, net, i) for net, i in sorted(kept)])
    wait_reaped(node.host)
    assert veths(node.host) == []
    assert all(leases(ipam, config) == {} for config in nets)
    assert all([link["ifname"] for link in pod.links()] == ["lo"] for pod in pods)
