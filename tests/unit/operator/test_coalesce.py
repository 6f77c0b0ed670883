"""Pod churn without full passes (issue 16): a lease or result-cache write only
refreshes the counts of the last report, coalesced with a bounded delay; a full
pass runs when something waits for a network to be empty, and for every other
change. The loop test runs the agent's real loop, real reconciler and real inotify
on a tmp host root; only the API server and host-gw are recorders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cni_operator.agent import Agent, AgentSettings
from cni_operator.node import manifest as manifest_io
from cni_operator.node.attachments import AttachmentScan
from cni_operator.node.coalesce import (
    Coalescer,
    network_changed,
    only_attachments,
    own_node_changed,
    refreshed_pools,
    refreshed_status,
    rescan,
)
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.watcher import DirEvent
from cni_operator.pools import RangeSetUsage, host_local_pools

from tests.unit.operator.test_agent_loop import KUBECONFIG, RecordingHostGateway, RecordingKube

ROOT = Path("/r")
PATHS = HostPaths(ROOT)


def event(directory: Path, name: str = "x") -> DirEvent:
    return DirEvent(directory, name, 0x100)


def test_lease_and_result_cache_writes_need_no_full_pass() -> None:
    leases = PATHS.networks_dir / "podnet"
    assert only_attachments(PATHS, [event(leases, "10.0.0.2"), event(PATHS.results_dir)])
    assert only_attachments(PATHS, [event(PATHS.networks_dir, "newnet")])


@pytest.mark.parametrize("directory", [PATHS.conf_dir, PATHS.bin_dir, ROOT / "elsewhere"])
def test_any_other_change_in_a_batch_needs_the_pass(directory: Path) -> None:
    assert not only_attachments(PATHS, [event(PATHS.results_dir), event(directory)])


def test_an_empty_batch_is_not_a_lease_write() -> None:
    assert not only_attachments(PATHS, [])


def scan_of(**counts: int) -> AttachmentScan:
    scan = AttachmentScan()
    for network, count in counts.items():
        for i in range(count):
            scan.add(network, f"c{i:03}", "eth0")
    return scan


def status_with(*entries: dict[str, Any], problems: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"networks": list(entries), "problems": list(problems), "attachments": []}


def show(path: str) -> str:
    return PATHS.host_view(path)


def test_counts_of_applied_networks_are_refreshed_under_their_cni_name() -> None:
    status = status_with(
        {"name": "podnet", "state": "Applied", "attachments": 0},
        {"name": "other", "state": "Invalid", "message": "bad"},
    )
    names = {"podnet": "pods"}
    refreshed = refreshed_status(status, scan_of(pods=3, stray=1), names, show)
    assert refreshed is not None
    assert refreshed["networks"][0]["attachments"] == 3
    assert refreshed["networks"][1] == status["networks"][1]
    assert [(a["network"], a["count"]) for a in refreshed["attachments"]] == [
        ("pods", 3),
        ("stray", 1),
    ]
    assert status["networks"][0]["attachments"] == 0, "the last report is not changed in place"


def test_container_ids_are_capped_at_twenty() -> None:
    refreshed = refreshed_status(status_with(), scan_of(pods=25), {}, show)
    assert refreshed is not None
    assert refreshed["attachments"][0]["count"] == 25
    assert len(refreshed["attachments"][0]["containers"]) == 20


def test_a_held_switch_gets_a_full_pass() -> None:
    blocked = {"name": "podnet", "state": "Blocked", "attachments": 2}
    assert refreshed_status(status_with(blocked), scan_of(), {}, show) is None


def test_a_held_quarantine_gets_a_full_pass() -> None:
    held = {"code": "QuarantineHeld", "message": "m"}
    assert refreshed_status(status_with(problems=[held]), scan_of(), {}, show) is None


def test_a_change_of_the_unreadable_cache_files_gets_a_full_pass() -> None:
    scan = scan_of(pods=1)
    scan.empty_cache_files.append(str(PATHS.results_dir / "bad"))
    assert refreshed_status(status_with(), scan, {}, show) is None
    reported = {"code": "EmptyResultCache", "path": "/var/lib/cni/results/bad"}
    assert refreshed_status(status_with(problems=[reported]), scan, {}, show) is not None


CONFLIST = (
    b'{"cniVersion": "1.0.0", "name": "pods", "plugins": [{"type": "bridge", '
    b'"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.9.0.0/24"}]]}}]}'
)
POOL = host_local_pools("podnet", CONFLIST)[0]


def reported_pool(used: int, leaked: int = 0, percent: int | None = None) -> dict[str, Any]:
    """An ipPools entry as the last full pass wrote it (its leak check done)."""
    entry = RangeSetUsage(POOL, 0, 253, used, ()).to_dict()
    entry.update(leaked=leaked, leakedLeases=[{"ip": "10.9.0.9", "containerID": "c"}] * leaked)
    if percent is not None:
        entry["percent"] = percent
    return entry


def usage(used: int) -> list[RangeSetUsage]:
    return [RangeSetUsage(POOL, 0, 253, used, None)]  # read without the runtime


def test_pool_counts_follow_the_lease_store_and_keep_the_last_leak_check() -> None:
    fresh = refreshed_pools([reported_pool(2)], usage(5), {"podnet": 80})
    assert fresh is not None
    assert (fresh[0]["used"], fresh[0]["percent"], fresh[0]["size"]) == (5, 2, 253)
    assert (fresh[0]["leakCheck"], fresh[0]["leaked"]) == ("Done", 0)


def test_a_count_that_moves_where_a_problem_is_worded_gets_a_full_pass() -> None:
    assert refreshed_pools([reported_pool(2, leaked=1)], usage(3), {"podnet": 80}) is None
    assert refreshed_pools([reported_pool(2)], usage(3), {"podnet": 1}) is None, "now at pressure"
    at = reported_pool(203, percent=81)
    assert refreshed_pools([at], usage(150), {"podnet": 80}) is None, "was at pressure"
    unchanged = refreshed_pools([reported_pool(2, leaked=1)], usage(2), {"podnet": 80})
    assert unchanged is not None and unchanged[0]["leaked"] == 1, "nothing moved: no pass"


def test_other_range_sets_than_reported_get_a_full_pass() -> None:
    assert refreshed_pools([], usage(1), {}) is None
    assert refreshed_pools([reported_pool(1)], [], {}) is None


def test_a_rescan_reads_the_managed_pools_leases_again(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    paths.conf_dir.mkdir(parents=True)
    (paths.conf_dir / "10-pods.conflist").write_bytes(CONFLIST)
    spec: dict[str, Any] = {"networkName": "pods"}
    manifest_io.save(paths, Manifest({"podnet": ManagedNetwork("10-pods.conflist", "x", 1, spec)}))
    store = paths.root / "var/lib/cni/networks/pods"
    store.mkdir(parents=True)
    for i in range(4):
        (store / f"10.9.0.{i + 2}").write_text(f"c{i}\r\neth0")
    status = status_with({"name": "podnet", "state": "Applied", "attachments": 1})
    status["ipPools"] = [reported_pool(1)]
    refreshed = rescan(paths, status, {"podnet": spec})
    assert refreshed is not None
    assert refreshed["ipPools"][0]["used"] == 4
    assert refreshed["networks"][0]["attachments"] == 4
    assert status["ipPools"][0]["used"] == 1, "the last report is not changed in place"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scheduled_delay(coalescer: Coalescer) -> float:
    timer = coalescer._timer
    assert timer is not None
    return timer.when() - asyncio.get_running_loop().time()


def test_a_burst_fires_once_quiet_but_no_later_than_the_bound() -> None:
    clock = FakeClock()
    fired: list[float] = []

    async def scenario() -> None:
        coalescer = Coalescer(lambda: fired.append(clock.now), 0.25, 1.0, clock)
        coalescer.changed()
        assert scheduled_delay(coalescer) == pytest.approx(0.25, abs=0.05)
        clock.now = 0.9  # a write every 0.2 s keeps it quiet-less...
        coalescer.changed()
        assert scheduled_delay(coalescer) == pytest.approx(0.1, abs=0.05)  # ...to 1.0 s at most
        clock.now = 1.2
        coalescer.changed()
        assert scheduled_delay(coalescer) <= 0.05
        await until(lambda: bool(fired), 5)
        assert not coalescer.pending
        coalescer.changed()  # a new burst starts a new bound
        assert scheduled_delay(coalescer) == pytest.approx(0.25, abs=0.05)
        coalescer.cancel()
        assert not coalescer.pending

    asyncio.run(scenario())
    assert fired == [1.2]


async def until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def test_the_agent_refreshes_counts_on_lease_writes_and_passes_on_config_writes(
    tmp_path: Path,
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    settings = AgentSettings(
        "n1", tmp_path / "root", str(kubeconfig), resync_seconds=3600, heartbeat_seconds=3600
    )
    agent = Agent(settings)
    kube = RecordingKube()
    agent.kube = kube  # type: ignore[assignment]
    agent.host_gw = RecordingHostGateway()  # type: ignore[assignment]
    agent.listed = True
    agent._last_list = time.monotonic() + 3600
    passes: list[int] = []
    real_reconcile = agent.reconciler.reconcile

    def counting(networks: Any, node: Any) -> Any:
        passes.append(1)
        return real_reconcile(networks, node)

    agent.reconciler.reconcile = counting  # type: ignore[method-assign]
    leases = agent.paths.networks_dir / "podnet"

    def counts() -> list[tuple[str, int]]:
        last = kube.statuses[-1] if kube.statuses else {}
        return [(a["network"], a["count"]) for a in last.get("attachments") or []]

    async def scenario() -> None:
        await agent.start()
        await until(lambda: len(passes) == 1 and len(kube.statuses) == 1, 30)
        leases.mkdir(parents=True)  # a new network's store: watched before it is read
        for i in range(3):
            (leases / f"10.0.0.{i + 2}").write_text(f"c{i}\r\neth0")
        await until(lambda: counts() == [("podnet", 3)], 30)
        (leases / "10.0.0.2").unlink()
        await until(lambda: counts() == [("podnet", 2)], 30)
        assert len(passes) == 1, "lease writes ran no full pass"
        (agent.paths.conf_dir / "99-x.conf").write_text("{}")
        await until(lambda: len(passes) == 2, 30)
        await agent.stop()

    asyncio.run(scenario())


def test_only_what_a_pass_uses_from_its_own_node_wakes_it() -> None:
    meta: dict[str, Any] = {"name": "n1", "uid": "u1", "labels": {"zone": "a"}}
    node: dict[str, Any] = {
        "metadata": meta,
        "spec": {"podCIDR": "10.1.0.0/24"},
        "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": "t1"}]},
    }
    heartbeat = {**node, "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": "t2"}]}}
    assert not own_node_changed(node, heartbeat)
    relabelled = {**node, "metadata": {**meta, "labels": {"zone": "b"}}}
    assert own_node_changed(node, relabelled)
    assert own_node_changed(node, {**node, "spec": {"podCIDR": "10.2.0.0/24"}})
    assert own_node_changed(node, {**node, "metadata": {**meta, "uid": "u2"}})
    not_ready = {**node, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert own_node_changed(node, not_ready), "kubelet's word on the network is read by a pass"
    assert own_node_changed(None, node)
    assert own_node_changed(node, None)


def test_only_what_a_pass_reads_from_a_network_wakes_it() -> None:
    meta: dict[str, Any] = {"name": "podnet", "uid": "u1", "generation": 1, "annotations": {}}
    body: dict[str, Any] = {"metadata": meta, "spec": {"priority": 10}, "status": {}}
    status_write = {
        **body,
        "status": {"nodesReady": 7},
        "metadata": {**meta, "resourceVersion": "9"},
    }
    assert not network_changed(body, status_write), "the controller's status write"
    assert network_changed(body, {**body, "spec": {"priority": 20}})
    assert network_changed(body, {**body, "metadata": {**meta, "generation": 2}})
    for key in ("cniwarden.io/proceed-generation", "cniwarden.io/proceed-nodes"):
        acknowledged = {**meta, "annotations": {key: "2"}}
        assert network_changed(body, {**body, "metadata": acknowledged}), "the gate reads it"
    kopf = {**meta, "annotations": {"kopf.zalando.org/last-handled-configuration": "{}"}}
    assert not network_changed(body, {**body, "metadata": kopf}), "kopf's own progress"
    deleting = {**meta, "deletionTimestamp": "2026-12-06T06:00:00Z"}
    assert network_changed(body, {**body, "metadata": deleting})
    assert network_changed(body, {**body, "metadata": {**meta, "uid": "u2"}}), "recreated"
    assert network_changed(None, body)
