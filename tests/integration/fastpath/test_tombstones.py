"""DEL through the resident server answers before the kernel unregisters the veth pair.

The pair is buried (node_plugin.kernel.tombstones): the host end detached from the bridge, down,
renamed and marked with the tombstone link group, the sandbox end down, without
addresses and renamed, so CNI_IFNAME is free at once; the server's reaper unregisters it
after the answer. These tests hold the reaper (the test harness's `--hold-tombstones`,
devtools.cniserver_harness) where they need the tombstones to last, and check what a
runtime and the next pods see meanwhile, and what clears tombstones: the reaper, a
restarted server, GC of either plugin path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fastpath.conftest import Node
from tests.integration.plugin.kernel import (
    TOMBSTONE_GROUP,
    Netns,
    netns_factory,
    run,
    tombstones,
    unique,
    veths,
    wait_reaped,
)

pytestmark = pytest.mark.root

Sandboxes = Callable[[], Netns]


@pytest.fixture
def sandboxes() -> Iterator[Sandboxes]:
    with netns_factory("cwts-") as make:
        yield make


def network(workdir: Path, first: str, last: str) -> dict[str, Any]:
    """A gateway bridge whose range holds only first..last (so addresses get reused)."""
    return {
        "cniVersion": "1.1.0",
        "name": unique("tomb"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.81.0.0/24",
            "rangeStart": first,
            "rangeEnd": last,
            "dataDir": str(workdir / "ipam"),
        },
    }


def add(node: Node, config: dict[str, Any], pod: Netns, container: str) -> dict[str, Any]:
    done = node.cni("ADD", config, pod, container)
    assert done.returncode == 0, done.stdout
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def delete(node: Node, config: dict[str, Any], pod: Netns, container: str) -> None:
    done = node.cni("DEL", config, pod, container)
    assert done.returncode == 0, done.stdout


def address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"]).split("/")[0]


def leases(workdir: Path, config: dict[str, Any]) -> dict[str, str]:
    store = workdir / "ipam" / config["name"]
    return {p.name: p.read_text().split("\r\n")[0] for p in store.iterdir() if p.name[0].isdigit()}


def ping(source: Netns, target: str) -> None:
    source.exec("ping", "-c", "1", "-W", "2", target)


def packets(ns: Netns, ifname: str) -> tuple[int, int]:
    stats = ns.ip("-s", "link", "show", "dev", ifname)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"]


def test_del_answers_with_the_pair_out_of_service_and_the_interface_name_free(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    node.start_server(hold_tombstones=True)
    config = network(workdir, "10.81.0.9", "10.81.0.9")
    pod = sandboxes()
    first = add(node, config, pod, "c1")
    host_veth = first["interfaces"][1]["name"]
    delete(node, config, pod, "c1")

    # The sandbox: eth0 is free; the buried end is down, addressless, marked.
    assert pod.link("eth0") is None
    [buried] = tombstones(pod)
    assert buried["ifname"].startswith("cwtomb") and "UP" not in buried["flags"]
    assert pod.addrs(buried["ifname"]) == []
    # The node: the host end left the bridge, is down, renamed and says whose it was.
    [host_end] = tombstones(node.host)
    assert host_end["ifname"] == "cwtomb" + host_veth[4:]
    assert "master" not in host_end and "UP" not in host_end["flags"]
    assert host_end["ifalias"] == "cniwarden tombstone of c1/eth0"
    assert host_end["group"] == str(int(TOMBSTONE_GROUP, 16))
    assert host_end["link_index"] == buried["ifindex"]
    assert node.host.link(host_veth) is None
    assert leases(workdir, config) == {}

    # The runtime re-ADDs the same container and interface at once: it works, with the
    # only address of the range, and the pod is reachable while the tombstones exist.
    again = add(node, config, pod, "c1")
    assert address(again) == address(first) == "10.81.0.9"
    assert pod.addrs("eth0") == ["10.81.0.9/24"]
    ping(node.host, "10.81.0.9")
    assert len(tombstones(node.host)) == 1 and len(tombstones(pod)) == 1


def test_a_released_address_serves_a_new_pod_while_the_old_pair_awaits_reaping(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    node.start_server(hold_tombstones=True)
    config = network(workdir, "10.81.0.2", "10.81.0.3")
    neighbour, old, new = sandboxes(), sandboxes(), sandboxes()
    assert address(add(node, config, neighbour, "neighbour")) == "10.81.0.2"
    assert address(add(node, config, old, "old")) == "10.81.0.3"
    ping(neighbour, "10.81.0.3")  # the bridge and the neighbour learn the old pod's MAC
    delete(node, config, old, "old")
    [tomb] = tombstones(node.host)
    before = packets(node.host, tomb["ifname"])

    assert address(add(node, config, new, "new")) == "10.81.0.3"  # the released address
    # The neighbour had the old MAC for .3 cached; ADD's gratuitous ARP replaced it, so
    # its very first packet reaches the new pod (test_bridge.py has the dual-stack case).
    ping(neighbour, "10.81.0.3")
    ping(node.host, "10.81.0.3")
    for _ in range(3):
        ping(neighbour, "10.81.0.3")
        ping(node.host, "10.81.0.3")
    # Everything reached the new pod; not one frame went through the buried pair.
    assert packets(node.host, tomb["ifname"]) == before
    ports = json.loads(run("bridge", "-n", node.host.name, "-j", "link", "show"))
    assert tomb["ifname"] not in {p["ifname"] for p in ports}
    assert [t["ifname"] for t in tombstones(node.host)] == [tomb["ifname"]]


def test_the_reaper_unregisters_every_buried_pair(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    node.start_server()
    config = network(workdir, "10.81.0.2", "10.81.0.200")
    pods = [sandboxes() for _ in range(8)]
    for i, pod in enumerate(pods):
        add(node, config, pod, f"p{i}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: delete(node, config, pods[i], f"p{i}"), range(8)))
    wait_reaped(node.host)
    assert veths(node.host) == []
    for pod in pods:
        assert [link["ifname"] for link in pod.links()] == ["lo"]
    assert leases(workdir, config) == {}


def test_tombstones_of_a_killed_server_are_unregistered_when_it_restarts(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    node.start_server(hold_tombstones=True)
    config = network(workdir, "10.81.0.2", "10.81.0.200")
    pods = [sandboxes() for _ in range(3)]
    for i, pod in enumerate(pods):
        add(node, config, pod, f"p{i}")
    delete(node, config, pods[0], "p0")
    delete(node, config, pods[1], "p1")
    assert len(tombstones(node.host)) == 2
    node.kill_server()
    delete(node, config, pods[2], "p2")  # queued: the server is down
    assert len(node.shim.queued()) == 1

    node.start_server()  # replays the queued DEL, sweeps, then serves
    assert node.shim.queued() == []
    assert tombstones(node.host) == []
    assert veths(node.host) == []
    for pod in pods:
        assert [link["ifname"] for link in pod.links()] == ["lo"]
    assert leases(workdir, config) == {}


def test_gc_unregisters_tombstones_on_both_plugin_paths(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    node.start_server(hold_tombstones=True)
    config = network(workdir, "10.81.0.2", "10.81.0.200")
    gc = {**config, "cni.dev/valid-attachments": []}
    standalone = Path(sys.executable).parent / "cniwarden-bridge"
    for path in ("standalone", "shim-server"):
        pods = [sandboxes() for _ in range(2)]
        for i, pod in enumerate(pods):
            add(node, config, pod, f"{path}{i}")
            delete(node, config, pod, f"{path}{i}")
        assert len(tombstones(node.host)) == 2
        if path == "standalone":
            done = subprocess.run(
                ["nsenter", f"--net={node.host.path}", str(standalone)],
                input=json.dumps(gc).encode(),
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "GC"},
                capture_output=True,
                timeout=60,
                check=False,
            )
        else:
            done = node.cni("GC", gc, None, "")
        assert done.returncode == 0, done.stdout
        assert tombstones(node.host) == [], path
        assert veths(node.host) == []
        for pod in pods:
            assert [link["ifname"] for link in pod.links()] == ["lo"]


def test_a_sandbox_veth_whose_peer_is_elsewhere_is_deleted_and_nothing_is_buried(
    node: Node, workdir: Path, sandboxes: Sandboxes
) -> None:
    """Interface indices repeat across namespaces: the host end must be proven, not guessed."""
    node.start_server(hold_tombstones=True)
    config = network(workdir, "10.81.0.2", "10.81.0.200")
    pod = sandboxes()
    result = add(node, config, pod, "pod")
    host_veth = node.host.must_link(result["interfaces"][1]["name"])
    # Another sandbox whose eth0 looks, by indices only, like that pod's pair: its peer
    # has the host veth's index and the host veth's peer has its index, but the peer
    # lives in a third namespace.
    stranger, elsewhere = sandboxes(), sandboxes()
    run(
        "ip", "-n", elsewhere.name, "link", "add", "name", "cwpeer",
        "index", str(host_veth["ifindex"]), "type", "veth", "peer", "name", "eth0",
        "netns", stranger.name, "index", str(host_veth["link_index"]),
    )  # fmt: skip
    assert stranger.must_link("eth0")["link_index"] == host_veth["ifindex"]
    delete(node, config, stranger, "stranger")
    assert stranger.link("eth0") is None and tombstones(stranger) == []
    assert elsewhere.link("cwpeer") is None, "the pair was deleted, synchronously"
    assert tombstones(node.host) == []
    untouched = node.host.must_link(host_veth["ifname"])
    assert untouched["master"] == config["bridge"] and "UP" in untouched["flags"]
    ping(node.host, address(result))
