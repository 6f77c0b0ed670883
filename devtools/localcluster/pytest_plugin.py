"""pytest integration: the `cluster` marker and the session-scoped `cluster` fixture.

    @pytest.mark.cluster("real-node")
    def test_pod_runs(cluster: LocalCluster) -> None: ...

One cluster per session, at the highest tier any selected test asks for
(computed at collection), torn down at session end even when tests fail.
A test asking for a tier is skipped, with the reason, only when this machine
cannot run that tier (not root, missing kernel features).

Environment:
- CNIWARDEN_CLUSTER=<name>: use a cluster already started with `make cluster-up`
  (kept running afterwards) instead of starting one.
- CNIWARDEN_FAKE_NODES (default 3), CNIWARDEN_REAL_NODES (default: one per runtime below).
- CNIWARDEN_REAL_NODE_RUNTIMES: each real node's runtime, e.g. `containerd-2,crio`
  (default: Debian's containerd 1.6 on every node).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from . import hostres
from .cluster import LocalCluster, attach, reap_orphans, up
from .layout import DEFAULT_RUNTIME, parse_runtimes
from .tiers import Tier

_TIER_KEY = pytest.StashKey[Tier | None]()


def _marker_tier(mark: pytest.Mark) -> Tier:
    if len(mark.args) != 1 or not isinstance(mark.args[0], str):
        raise pytest.UsageError(f"@pytest.mark.cluster takes one tier name, got args={mark.args!r}")
    try:
        return Tier.parse(mark.args[0])
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers = []
    for item in items:
        marks = list(item.iter_markers("cluster"))
        tiers += [_marker_tier(m) for m in marks]
        if not marks and "cluster" in getattr(item, "fixturenames", ()):
            tiers.append(Tier.CONTROL_PLANE)
    config.stash[_TIER_KEY] = Tier.highest(tiers)


def why_tier_cannot_run(tier: Tier) -> str | None:
    """Why this machine cannot run `tier`, or None when it can."""
    if os.geteuid() != 0:
        return f"cluster tier {tier.value} needs root (it creates network namespaces and links)"
    if tier.includes(Tier.REAL_NODE):
        if not Path("/proc/self/ns/net").exists():
            return "the real-node tier needs network namespaces (CONFIG_NET_NS)"
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the real-node tier needs overlayfs for containerd's snapshotter"
        if not hostres.cgroup_mount_points():
            return "the real-node tier needs cgroups mounted under /sys/fs/cgroup"
        for binary in ("containerd", "runc", "nsenter", "ctr", "gcc"):
            if shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
                return f"the real-node tier needs {binary} (run `make debs`)"
    return None


def _terminate_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into KeyboardInterrupt so fixture finalizers (teardown) run.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The session's local cluster, at the highest tier the selected tests need."""
    existing = os.environ.get("CNIWARDEN_CLUSTER")
    if existing:
        yield attach(existing)
        return
    tier = request.config.stash.get(_TIER_KEY, None) or Tier.CONTROL_PLANE
    reason = why_tier_cannot_run(tier)
    if reason:
        pytest.skip(reason)
    reap_orphans()
    name = f"pytest-{os.getpid()}"
    runtimes = parse_runtimes(os.environ.get("CNIWARDEN_REAL_NODE_RUNTIMES", DEFAULT_RUNTIME))
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    print(f"\nlocalcluster: starting {name} at tier {tier.value}", file=sys.stderr)
    started = up(
        name,
        tier,
        fake_nodes=int(os.environ.get("CNIWARDEN_FAKE_NODES", "3")),
        real_nodes=int(os.environ.get("CNIWARDEN_REAL_NODES") or len(runtimes)),
        owner_pid=os.getpid(),
        runtimes=runtimes,
    )
    done = False

    def teardown() -> None:
        nonlocal done
        if not done:
            done = True
            started.down()

    atexit.register(teardown)
    try:
        yield started
    finally:
        teardown()
        atexit.unregister(teardown)


@pytest.fixture(autouse=True)
def _cluster_marker(request: pytest.FixtureRequest) -> None:
    """Give every test marked `cluster(tier)` the session cluster, or skip it with why."""
    marks = list(request.node.iter_markers("cluster"))
    if not marks:
        return
    wanted = Tier.highest([_marker_tier(m) for m in marks])
    assert wanted is not None
    reason = why_tier_cannot_run(wanted)
    if reason:
        pytest.skip(reason)
    running: LocalCluster = request.getfixturevalue("cluster")
    if not running.tier.includes(wanted):
        pytest.skip(
            f"needs tier {wanted.value}, but the session cluster {running.name} "
            f"runs {running.tier.value} (CNIWARDEN_CLUSTER points at a smaller cluster)"
        )
