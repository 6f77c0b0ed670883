"""Lease writes without full passes: the agent's reaction to pod churn.

Every pod ADD and DEL writes host-local leases and libcni's result cache. Those
files change nothing the agent writes; they change only how many pods each network
has on this node (the counts in the report), and, where a switch or a quarantine
waits for a network to be empty, whether it may go ahead. So a change there that
nothing waits for only refreshes the counts of the last report, and bursts of them
are coalesced: the refresh runs once the directories have been quiet for
`quiet_seconds`, and at most `max_delay_seconds` after the first change, so a
steady churn is still reported within that bound. Anything else (net.d, the bin
dir, objects) keeps its full pass.

The pool usage (`ipPools`: leased of size per range set) is such a count too, and
is refreshed the same way, from the lease store alone. What needs the runtime's
sandbox list or words a problem stays with the full pass: a refresh that would
change the usage of a range set with leaked leases, or at or above its pressure
threshold (before or after), runs the pass instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cni_operator.api import ACK_GENERATION_ANNOTATION, ACK_NODES_ANNOTATION
from cni_operator.conditions import STATE_APPLIED, STATE_BLOCKED
from cni_operator.node import manifest as manifest_io
from cni_operator.node.attachments import AttachmentScan, attachments_report, scan_attachments
from cni_operator.node.manifest import Manifest, ManifestError
from cni_operator.node.paths import HostPaths
from cni_operator.node.pools import scan_pools
from cni_operator.node.watcher import DirEvent
from cni_operator.pools import RangeSetUsage, spec_thresholds
from cni_operator.rendering import NodeFacts

# The annotations a pass reads (the switch gate's acknowledgement).
ACKNOWLEDGEMENT = (ACK_GENERATION_ANNOTATION, ACK_NODES_ANNOTATION)
# Problem codes of a pass that waits for a network to have no attachments.
WAITS_FOR_ATTACHMENTS = frozenset({"QuarantineHeld"})
EMPTY_CACHE_CODE = "EmptyResultCache"


def only_attachments(paths: HostPaths, events: Iterable[DirEvent]) -> bool:
    """Whether every event is in the lease store or the result cache (and so needs
    no full pass). An empty batch is not: the caller decides what nothing means."""
    attachment_dirs = (paths.networks_dir, paths.results_dir)
    seen = False
    for event in events:
        seen = True
        if event.directory not in attachment_dirs and event.directory.parent != paths.networks_dir:
            return False
    return seen


def network_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a new copy of a CNINetwork changes what a pass reads from it: its
    identity (uid), generation, spec, our annotations (the switch gate's
    acknowledgements) and deletion. The controller rewrites the status as node reports
    arrive (a rollout to N nodes writes it up to N times), kopf records its handlers'
    progress in annotations of its own, and every agent receives each write; a pass for
    each would cost N passes per node per rollout, for nothing any pass uses."""

    def used(body: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        if body is None:
            return None
        meta = body.get("metadata") or {}
        return (
            meta.get("uid"),
            meta.get("generation"),
            meta.get("deletionTimestamp"),
            *((meta.get("annotations") or {}).get(key) for key in ACKNOWLEDGEMENT),
            body.get("spec"),
        )

    return used(old) != used(new)


def own_node_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a new copy of this agent's own Node changes what a pass uses from it:
    the facts rendering reads (name, labels, pod CIDRs), its uid (the owner of the
    CNINodeState) and its Ready condition's status, reason and message (what kubelet
    says of the network). The rest of its status (heartbeat times, images, resources)
    changes every few seconds and matters to no pass, so it wakes none."""

    def used(node: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
        if node is None:
            return None
        ready = next(
            (
                (c.get("status"), c.get("reason"), c.get("message"))
                for c in (node.get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ),
            None,
        )
        return NodeFacts.from_node(node), (node.get("metadata") or {}).get("uid"), ready

    return used(old) != used(new)


def cni_names(applied_specs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """CNINetwork name -> the network name its pods' leases carry (the rule of
    `api.NetworkSpec.cni_name`, read from the applied spec's JSON form)."""
    return {name: str(spec.get("networkName") or name) for name, spec in applied_specs.items()}


def refreshed_status(
    status: Mapping[str, Any],
    scan: AttachmentScan,
    names: Mapping[str, str],
    host_view: Callable[[str], str],
) -> dict[str, Any] | None:
    """The last report with the counts of `scan`, or None when a full pass is due
    instead: something waits for a network to be empty (a held switch or
    quarantine, which only a pass may let go), or the unreadable result cache files
    changed (a problem of the report, which the pass's scan words)."""
    networks = status.get("networks") or []
    problems = status.get("problems") or []
    if any(entry.get("state") == STATE_BLOCKED for entry in networks):
        return None
    if any(problem.get("code") in WAITS_FOR_ATTACHMENTS for problem in problems):
        return None
    reported_empty = {p.get("path") for p in problems if p.get("code") == EMPTY_CACHE_CODE}
    if reported_empty != {host_view(path) for path in scan.empty_cache_files}:
        return None
    refreshed = dict(status)
    refreshed["attachments"] = attachments_report(scan)
    refreshed["networks"] = [
        dict(entry, attachments=scan.count(names.get(entry.get("name", ""), entry.get("name", ""))))
        if entry.get("state") == STATE_APPLIED and "attachments" in entry
        else entry
        for entry in networks
    ]
    return refreshed


LEAK_KEYS = ("leakCheck", "leaked", "leakedLeases")


def refreshed_pools(
    reported: Iterable[Mapping[str, Any]],
    usage: Iterable[RangeSetUsage],
    thresholds: Mapping[str, int],
) -> list[dict[str, Any]] | None:
    """The last report's `ipPools` with the lease counts of `usage` (the store read
    again, without the runtime), the leak check of the last pass kept; None when a
    full pass is due instead: the range sets differ, or a count moves in a range set
    with leaked leases or at or above its network's pressure threshold (`thresholds`,
    by network), whose problems only a pass words."""
    before = {(str(item.get("network")), item.get("rangeSet")): item for item in reported}
    out: list[dict[str, Any]] = []
    for item in usage:
        fresh = item.to_dict()
        old = before.pop((item.pool.network, item.set_index), None)
        if old is None:
            return None
        if old.get("used") != fresh["used"]:
            threshold = thresholds.get(item.pool.network, 100)
            if old.get("leaked") or max(int(old.get("percent") or 0), item.percent) >= threshold:
                return None
        for key in LEAK_KEYS:
            fresh.pop(key, None)
            if key in old:
                fresh[key] = old[key]
        out.append(fresh)
    return None if before else out


def rescan(
    paths: HostPaths, status: Mapping[str, Any], applied_specs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """Read the attachments and the managed pools' leases again and refresh `status`
    (see `refreshed_status` and `refreshed_pools`)."""
    extra = [
        paths.root / data_dir.lstrip("/")
        for spec in applied_specs.values()
        for plugin in spec.get("plugins") or []
        if isinstance(data_dir := ((plugin or {}).get("ipam") or {}).get("dataDir"), str)
        and data_dir.startswith("/")
        and ".." not in data_dir
    ]
    scan = scan_attachments(paths, extra)
    refreshed = refreshed_status(status, scan, cni_names(applied_specs), paths.host_view)
    if refreshed is None or "ipPools" not in status:
        return refreshed
    try:
        manifest: Manifest = manifest_io.load(paths)
    except (OSError, ManifestError):
        return None  # the pass says what is wrong with it
    pools = scan_pools(paths, manifest, None)
    if pools.problems:
        return None  # unreadable pools: the pass words them
    thresholds = {
        name: spec_thresholds(managed.spec)[0] for name, managed in manifest.networks.items()
    }
    fresh = refreshed_pools(status["ipPools"], pools.usage, thresholds)
    if fresh is None:
        return None
    refreshed["ipPools"] = fresh
    return refreshed


class Coalescer:
    """Fires `fire` once a burst of changes is over: `quiet_seconds` after the last
    change, and never later than `max_delay_seconds` after the first one."""

    def __init__(
        self,
        fire: Callable[[], None],
        quiet_seconds: float = 0.25,
        max_delay_seconds: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.fire = fire
        self.quiet_seconds = quiet_seconds
        self.max_delay_seconds = max_delay_seconds
        self._clock = clock
        self._first: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def _now(self, loop: asyncio.AbstractEventLoop) -> float:
        return self._clock() if self._clock is not None else loop.time()

    def changed(self) -> None:
        """Note a change (call from the event loop)."""
        loop = asyncio.get_running_loop()
        now = self._now(loop)
        if self._first is None:
            self._first = now
        delay = min(self.quiet_seconds, self._first + self.max_delay_seconds - now)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(0.0, delay), self._fire)

    def cancel(self) -> None:
        """A full pass is about to run and will cover the pending changes."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._first = None

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def _fire(self) -> None:
        self._timer = None
        self._first = None
        self.fire()


async def first_of(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
