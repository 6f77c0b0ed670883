"""IP pool usage, leaked leases and leak repair on a tmp host root (no runtime needed:
the live sandbox ids are given; the CRI listing itself is tested against a real
containerd in tests/integration/cluster/test_leak_repair.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cni_operator.conditions import build_status
from cni_operator.node.cri import RuntimeProbe
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.pools import reclaim_leaked, scan_pools
from cni_operator.node.sandboxes import SandboxListing
from cni_operator.pools import (
    PoolConfigError,
    PoolLease,
    host_local_pools,
    is_leaked,
    pool_usage,
    spec_thresholds,
)

from node_plugin.ipam.store import Store

from .fake_cri import FakeRuntime, fake_runtime

NET = "poolnet"
SUBNET = "10.77.0.0/29"  # hosts .1-.6; .1 is the gateway: 5 allocatable


def conflist(ipam: dict[str, Any], name: str = NET) -> bytes:
    plugin = {"type": "cniwarden-bridge", "bridge": "br0", "ipam": ipam}
    return json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}).encode()


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    paths = HostPaths(tmp_path)
    paths.ensure()
    return paths


def managed(host: HostPaths, spec_extra: dict[str, Any] | None = None) -> Manifest:
    data_dir = "/var/lib/cni/networks"
    raw = conflist({"type": "cniwarden-host-local", "subnet": SUBNET, "dataDir": data_dir})
    (host.conf_dir / f"10-{NET}.conflist").write_bytes(raw)
    spec = {"priority": 10, "plugins": [], **(spec_extra or {})}
    return Manifest(networks={NET: ManagedNetwork(f"10-{NET}.conflist", "x", 1, spec)})


def lease(host: HostPaths, ip: str, container: str, age: float) -> None:
    store = Store(str(host.networks_dir), NET)
    with store.locked():
        assert store.reserve(ipaddress.ip_address(ip), container, "eth0", 0)
    when = time.time() - age
    os.utime(store.dir / ip, (when, when))


def test_host_local_pools_reads_every_host_local_section() -> None:
    pools = host_local_pools(
        "n",
        conflist(
            {"type": "host-local", "ranges": [[{"subnet": SUBNET}], [{"subnet": "fd00::/120"}]]}
        ),
    )
    sizes = [rs.allocatable() for rs in pools[0].range_sets]
    assert sizes == [5, 254]  # /29: minus network, broadcast, gateway; /120: no broadcast
    assert pools[0].lease_network == NET
    assert pools[0].data_dir == "/var/lib/cni/networks"
    assert host_local_pools("n", conflist({"type": "dhcp"})) == []
    with pytest.raises(PoolConfigError, match=r"plugins\[0\]\.ipam"):
        host_local_pools("n", conflist({"type": "host-local", "subnet": "10.0.0.0/33"}))
    with pytest.raises(PoolConfigError, match="not JSON"):
        host_local_pools("n", b"{")


def test_usage_counts_leases_in_each_set_and_rounds_percent_up() -> None:
    (pool,) = host_local_pools("n", conflist({"type": "host-local", "subnet": SUBNET}))
    leases = [
        PoolLease(ipaddress.ip_address(f"10.77.0.{i}"), f"c{i}", "eth0", 1000.0) for i in (2, 3)
    ]
    (usage,) = pool_usage(pool, leases, frozenset({"c2", "c3"}), 300)
    assert (usage.used, usage.size, usage.percent) == (2, 5, 40)
    assert usage.leaked == ()
    (usage,) = pool_usage(pool, leases, frozenset({"c2"}), 300)
    assert usage.leaked is not None and [str(x.ip) for x in usage.leaked] == ["10.77.0.3"]
    (unknown,) = pool_usage(pool, leases, None, 300)
    assert unknown.leaked is None and unknown.to_dict()["leakCheck"] == "RuntimeUnreachable"
    third = [PoolLease(ipaddress.ip_address("10.77.0.2"), "c", "eth0", 0.0)]
    (one,) = pool_usage(pool, third, frozenset(), 300)
    assert one.percent == 20
    (pool3,) = host_local_pools("n", conflist({"type": "host-local", "subnet": "10.9.0.0/24"}))
    in_24 = [PoolLease(ipaddress.ip_address("10.9.0.2"), "c", "eth0", 0.0)]
    (u3,) = pool_usage(pool3, in_24, frozenset({"c"}), 300)
    assert u3.size == 253 and u3.percent == 1  # 1/253 = 0.4 %, rounded up


def test_a_lease_is_leaked_only_when_gone_and_older_than_the_grace() -> None:
    ip = ipaddress.ip_address("10.0.0.2")
    assert is_leaked(PoolLease(ip, "gone", "eth0", 301), frozenset({"live"}), 300)
    assert not is_leaked(PoolLease(ip, "live", "eth0", 10_000), frozenset({"live"}), 300)
    assert not is_leaked(PoolLease(ip, "gone", "eth0", 299), frozenset({"live"}), 300)


def test_spec_thresholds_default_and_refuse_nonsense() -> None:
    assert spec_thresholds({}) == (90, 300)
    assert spec_thresholds({"ipam": {"pressureThreshold": 75, "leaseGraceSeconds": 120}}) == (
        75,
        120,
    )
    assert spec_thresholds({"ipam": {"pressureThreshold": 0, "leaseGraceSeconds": 5}}) == (90, 300)


def test_reclaim_releases_only_gone_and_old_leases(host: HostPaths) -> None:
    manifest = managed(host)
    lease(host, "10.77.0.2", "live-sandbox", 10_000)  # live: kept whatever its age
    lease(host, "10.77.0.3", "dead-old", 10_000)  # gone and old: leaked
    lease(host, "10.77.0.4", "dead-young", 5)  # gone but an ADD may be in flight: kept
    listing = SandboxListing(frozenset({"live-sandbox"}), "unix:///x")

    scan = scan_pools(host, manifest, listing)
    (usage,) = scan.usage
    assert (usage.used, usage.size) == (3, 5)
    assert usage.leaked is not None and [lease.container_id for lease in usage.leaked] == [
        "dead-old"
    ]
    assert {p.code for p in scan.problems} == {"LeakedLeases"}

    dry, _ = reclaim_leaked(host, manifest, listing, dry_run=True)
    assert [r.ip for r in dry] == ["10.77.0.3"]
    assert (host.networks_dir / NET / "10.77.0.3").exists()

    done, errors = reclaim_leaked(host, manifest, listing)
    assert errors == []
    assert [(r.ip, r.container_id) for r in done] == [("10.77.0.3", "dead-old")]
    left = sorted(p.name for p in (host.networks_dir / NET).iterdir() if p.name[0].isdigit())
    assert left == ["10.77.0.2", "10.77.0.4"]


def test_reclaim_releases_nothing_when_the_runtime_cannot_be_asked(host: HostPaths) -> None:
    manifest = managed(host)
    lease(host, "10.77.0.3", "dead-old", 10_000)
    done, errors = reclaim_leaked(host, manifest, SandboxListing(None, None, "socket gone"))
    assert done == [] and "nothing released" in errors[0]
    assert (host.networks_dir / NET / "10.77.0.3").exists()
    scan = scan_pools(host, manifest, SandboxListing(None, None, "socket gone"))
    assert "RuntimeUnreachable" in {p.code for p in scan.problems}


def test_reclaim_respects_disable_gc_and_the_spec_grace(host: HostPaths) -> None:
    lease(host, "10.77.0.3", "dead", 200)
    listing = SandboxListing(frozenset(), "unix:///x")
    assert reclaim_leaked(host, managed(host, {"disableGC": True}), listing)[0] == []
    assert reclaim_leaked(host, managed(host), listing)[0] == []  # 200 s < default 300 s
    grace = {"ipam": {"leaseGraceSeconds": 120}}
    assert [r.ip for r in reclaim_leaked(host, managed(host, grace), listing)[0]] == ["10.77.0.3"]


def test_pressure_problem_at_the_threshold(host: HostPaths) -> None:
    manifest = managed(host, {"ipam": {"pressureThreshold": 60}})
    for i in (2, 3, 4):
        lease(host, f"10.77.0.{i}", f"c{i}", 1)
    scan = scan_pools(host, manifest, SandboxListing(frozenset({"c2", "c3", "c4"}), "u"))
    assert scan.usage[0].percent == 60
    assert [p.code for p in scan.problems] == ["IPPoolPressure"]


def test_sandbox_listing_over_cri_and_never_a_failure_as_an_empty_set(tmp_path: Path) -> None:
    probe = RuntimeProbe(tmp_path, list_timeout=0.5)
    try:
        no_socket = probe.list_sandboxes()
        assert no_socket.ids is None and "no CRI socket answered" in str(no_socket.error)
        with fake_runtime(tmp_path, FakeRuntime(sandboxes=["aaa", "bbb"])) as runtime:
            listing = probe.list_sandboxes()
            assert listing.ids == frozenset({"aaa", "bbb"})
            assert listing.endpoint == "/run/containerd/containerd.sock"
            runtime.sandboxes = []
            assert probe.list_sandboxes().ids == frozenset()  # a real empty answer
            # A runtime that does not answer within the deadline: unknown, not empty.
            runtime.stall = threading.Event()
            started = time.monotonic()
            stalled = probe.list_sandboxes()
            assert time.monotonic() - started < 5
            assert stalled.ids is None and "DEADLINE_EXCEEDED" in str(stalled.error)
            runtime.stall.set()
        gone = probe.list_sandboxes()  # the runtime went away: asked again, unknown
        assert gone.ids is None and gone.error
    finally:
        probe.close()


def test_ip_pool_pressure_condition_names_the_nodes() -> None:
    def rep(used: int) -> dict[str, Any]:
        pool = {"network": "net", "ranges": "r", "used": used, "size": 10}
        return {"networks": [], "ipPools": [{**pool, "percent": used * 10}]}

    args: dict[str, Any] = {
        "network": "net",
        "generation": 1,
        "selected": ["a", "b", "c"],
        "spec_error": None,
        "previous_conditions": [],
        "now": "2026-01-01T00:00:00Z",
    }
    status = build_status(reports={"a": rep(9), "b": rep(3), "c": rep(10)}, **args)
    cond = {c["type"]: c for c in status["conditions"]}["IPPoolPressure"]
    assert cond["status"] == "True"
    assert "c: 10/10 (100%)" in cond["message"] and "a: 9/10 (90%)" in cond["message"]
    assert "b:" not in cond["message"]
    assert status["poolUsage"] == "100% (c)"
    calm = build_status(reports={"a": rep(9)}, pressure_threshold=95, **args)
    cond = {c["type"]: c for c in calm["conditions"]}["IPPoolPressure"]
    assert cond["status"] == "False" and "fullest a at 90%" in cond["message"]
