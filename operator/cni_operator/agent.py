"""The node agent: kopf watches the CNINetworks, the kernel watches the directories,
and one loop runs the Reconciler and publishes this node's CNINodeState.

Several agents may share an API server (and, in tests, one machine): each runs
kopf standalone (no peering, so no agent pauses another), uses only watching
handlers (`on.event`: no finalizers, no progress annotations written on the
shared CNINetwork objects), and writes only the CNINodeState named after its
node. No agent watches every Node: host-gw's peers (their podCIDRs and InternalIPs)
come from the one `CNINodeRoutes` object the controller publishes (kopf watches it,
see `noderoutes`), and the agent's own Node (its labels and podCIDRs for rendering,
and kubelet's Ready condition) from a watch field-selected on its name (`own_node`).

The runtime's own word is asked too: its CRI socket every `runtime_poll_seconds`
(Version once, Status each time), and kubelet's Ready condition as the Node watch
delivers it. Every report is judged against them (`runtime_truth`): a runtime that
says its network is down while the model says healthy is a problem and an Event
within a poll interval, not a healthy report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import kopf
from kubernetes.client.exceptions import ApiException

from cni_operator import api, kopf_runtime, noderoutes, readiness
from cni_operator.hostgw_node import HostGatewayNode
from cni_operator.kube import Kube
from cni_operator.kube_time import now_iso
from cni_operator.metrics import AgentMetrics
from cni_operator.node import coalesce
from cni_operator.node import manifest as manifest_io
from cni_operator.node.cniprobe import ReadinessProber
from cni_operator.node.cnistatus import configs_in_use, node_readiness
from cni_operator.node.cri import RuntimeProbe
from cni_operator.node.fetch import FetchLimits
from cni_operator.node.own_binaries import default_source
from cni_operator.node.paths import HostPaths
from cni_operator.node.scan import scan_node
from cni_operator.node.watcher import DirectoryWatcher
from cni_operator.own_node import OwnNodeWatch
from cni_operator.reconcile import PassResult, Reconciler
from cni_operator.reconcile.report import TransitionEvents, failed_pass_status
from cni_operator.runtime_truth import (
    RuntimeFacts,
    apply_judgement,
    as_chosen,
    kubelet_ready_condition,
)
from cni_operator.teardown import tidy_node

log = logging.getLogger("cniwarden.agent")
T = TypeVar("T")
COMPONENT = "cniwarden-agent"


@dataclass
class AgentSettings:
    node_name: str
    host_root: Path = Path("/")
    kubeconfig: str | None = None
    resync_seconds: float = 30.0
    heartbeat_seconds: float = 10.0
    debounce_seconds: float = 0.05
    # Lease and result-cache writes (pod churn): refresh the counts once quiet this
    # long, at most this long after the first write (see node/coalesce.py).
    attachments_quiet_seconds: float = 0.25
    attachments_max_delay_seconds: float = 1.0
    liveness_endpoint: str | None = None
    sources: api.BinarySourcePolicy = field(default_factory=api.BinarySourcePolicy)
    fetch_limits: FetchLimits = field(default_factory=FetchLimits)
    # The runtime's CRI socket as the node names it; None: the first well-known one.
    # One client (node/cri.py) asks it Version/Status and, for leak repair,
    # ListPodSandbox.
    runtime_endpoint: str | None = None
    runtime_poll_seconds: float = 1.0
    # How often leaked leases are reclaimed (0: report them, never reclaim).
    gc_interval_seconds: float = 60.0
    # The CNI-readiness taint (cniwarden.io/agent-not-ready): managed when True,
    # judged every readiness_seconds.
    readiness_taint: bool = False
    readiness_seconds: float = 2.0
    # The probe ADD + CHECK + DEL in a scratch netns (node/cniprobe.py), again every
    # this many seconds once passed (0: off; see readiness.probe_due for when else).
    readiness_probe_seconds: float = 300.0
    # Whose rules judge this node ("auto": the runtime that answers on its CRI
    # socket, every rule set when none does); drives the config and readiness.
    runtime: str = "auto"
    metrics_address: str = ""  # host:port of /metrics; empty: off


# Problems of the runtime cross-check that also get an Event when they appear.
RUNTIME_EVENT_PROBLEMS = frozenset({"RuntimeDisagrees"})
# After net.d or the bin dir changes, the runtime's word waits this long: it
# reloads them on inotify (containerd within ms, CRI-O within a second), and a
# report must not flap on the gap.
RUNTIME_SETTLE_SECONDS = 2.0


@dataclass
class Agent:
    settings: AgentSettings
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    listed: bool = False  # networks holds a full list (not just the first events)
    node: dict[str, Any] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a full pass is due
    attachments_changed: asyncio.Event = field(default_factory=asyncio.Event)
    rejudge_due: asyncio.Event = field(default_factory=asyncio.Event)  # the runtime settled
    _task: asyncio.Task[None] | None = None
    _gc_task: asyncio.Task[None] | None = None
    _readiness_task: asyncio.Task[None] | None = None
    _readiness: readiness.Readiness | None = None
    _readiness_since: str = ""
    _io_lock: threading.Lock = field(default_factory=threading.Lock)
    _last_status: dict[str, Any] | None = None
    _last_publish: float = 0.0
    _state_exists: bool = False
    _last_list: float = 0.0
    _failures: int = 0
    _last_applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    _node_state: dict[str, Any] | None = None
    _cri_facts: RuntimeFacts = field(default_factory=RuntimeFacts)
    _cri_asked_at: float = 0.0
    _dirs_changed_at: float = float("-inf")  # net.d or the bin dir: never seen changing
    _runtime_task: asyncio.Task[None] | None = None
    _nodes_listed: bool = False
    _own_node_watch: OwnNodeWatch | None = None

    def __post_init__(self) -> None:
        self.paths = HostPaths(self.settings.host_root)
        # The one CRI client: identity and NetworkReady, and the live sandboxes.
        self.runtime_probe = RuntimeProbe(self.settings.host_root, self.settings.runtime_endpoint)
        self.reconciler = Reconciler(
            self.paths,
            self.settings.node_name,
            default_source(),
            sources=self.settings.sources,
            fetch_limits=self.settings.fetch_limits,
            sandboxes=self.runtime_probe,
        )
        self.kube = Kube(self.settings.kubeconfig)
        self.host_gw = HostGatewayNode(
            self.settings.node_name, self.paths.state_dir / "hostgw-displaced.json"
        )
        self.attachment_writes = coalesce.Coalescer(
            self.attachments_changed.set,
            self.settings.attachments_quiet_seconds,
            self.settings.attachments_max_delay_seconds,
        )
        self._runtime_events = TransitionEvents(self.settings.node_name, RUNTIME_EVENT_PROBLEMS)
        self.metrics = AgentMetrics()
        self.readiness_prober = ReadinessProber(
            self.settings.node_name, self.settings.readiness_probe_seconds
        )

    # -------------------------------------------------------------- inputs
    def on_network(self, event_type: str | None, body: dict[str, Any]) -> None:
        name = body.get("metadata", {}).get("name")
        if not name:
            return
        old = self.networks.get(name)
        if event_type == "DELETED":
            self.networks.pop(name, None)
            self.wake.set()
            return
        self.networks[name] = body  # the newest copy, whatever changed
        if coalesce.network_changed(old, body):
            self.wake.set()

    def on_node(self, event_type: str | None, body: dict[str, Any] | None) -> None:
        """This agent's own Node (the only one it watches): rendering and host-gw."""
        if body is not None and (body.get("metadata") or {}).get("name") != self.settings.node_name:
            return
        node = None if event_type == "DELETED" else body
        if node is not None and self.node is not None and _rv(node) < _rv(self.node):
            return  # an older copy (a GET that crossed a watch event)
        changed = self.host_gw.set_own(node)
        changed = coalesce.own_node_changed(self.node, node) or changed
        self.node = node
        if changed:
            self.wake.set()

    def on_node_routes(self, event_type: str | None, body: dict[str, Any]) -> None:
        """The controller's projection of every Node (host-gw's peers). Deleted or
        unreadable: unknown again, so host-gw keeps the routes it has."""
        if (body.get("metadata") or {}).get("name") != noderoutes.NAME:
            return
        peers = None if event_type == "DELETED" else noderoutes.peers_of(body)
        if self.host_gw.set_peers(peers):
            self.wake.set()

    # ---------------------------------------------------------------- loop
    async def start(self) -> None:
        self.paths.ensure()
        for extra in (self.paths.networks_dir, self.paths.results_dir):
            extra.mkdir(parents=True, exist_ok=True)
        if self.settings.metrics_address:
            self.metrics.serve(self.settings.metrics_address)
        # The runtime first, so the first report already names it.
        self._cri_facts = await asyncio.to_thread(self._ask_runtime)
        self._cri_asked_at = time.monotonic()
        self._runtime_task = asyncio.create_task(self._watch_runtime())
        loop = asyncio.get_running_loop()
        self._own_node_watch = OwnNodeWatch(
            self.kube,
            self.settings.node_name,
            lambda kind, node: loop.call_soon_threadsafe(self.on_node, kind, node),
        )
        self._own_node_watch.start()
        self._task = asyncio.create_task(self._run())
        if self.settings.gc_interval_seconds > 0:
            self._gc_task = asyncio.create_task(self._gc_loop())
        if self.settings.readiness_taint:
            self._readiness_task = asyncio.create_task(self._readiness_loop())
        self.wake.set()  # a first pass right away: report this node even with no network

    async def stop(self) -> None:
        if self._own_node_watch is not None:
            self._own_node_watch.stop()
        for task in (self._readiness_task, self._gc_task, self._runtime_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.runtime_probe.close()
        # An agent that manages nothing here (e.g. after `helm uninstall`) leaves no
        # state behind; never a config or a binary (see teardown.tidy_node).
        await asyncio.to_thread(self._tidy)
        self.metrics.close()

    def _tidy(self) -> None:
        with self._io_lock:
            _, message = tidy_node(self.settings.host_root)
        log.info("%s", message)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._io_lock:
            return fn(*args)

    async def _watch_runtime(self) -> None:
        """Ask the runtime (CRI Status, each call under a deadline) every poll interval;
        a change of what it says wakes a pass, which publishes the new judgement."""
        while True:
            await asyncio.sleep(self.settings.runtime_poll_seconds)
            try:
                facts = await asyncio.to_thread(self._ask_runtime)
            except Exception:
                log.exception("asking the container runtime failed")
                continue
            self._cri_asked_at = time.monotonic()
            if facts != self._cri_facts:
                log.info(
                    "runtime %s %s: NetworkReady=%s %s %s",
                    facts.name or "unidentified",
                    facts.version,
                    facts.network_ready,
                    facts.network_reason,
                    facts.network_message or facts.status_error or facts.identify_error,
                )
                self._cri_facts = facts
                self.wake.set()

    def _ask_runtime(self) -> RuntimeFacts:
        """The runtime as CRI names it, or as --runtime overrides it."""
        return as_chosen(self.runtime_probe.facts(), self.settings.runtime)

    def runtime_facts(self) -> RuntimeFacts:
        """What the runtime (CRI) and kubelet (this Node's Ready condition) last said."""
        ready, reason, message = kubelet_ready_condition(self.node)
        settling = self._cri_asked_at - self._dirs_changed_at < RUNTIME_SETTLE_SECONDS
        return replace(
            self._cri_facts,
            kubelet_ready=ready,
            kubelet_reason=reason,
            kubelet_message=message,
            settling=settling,
        )

    async def _gc_loop(self) -> None:
        """Leak repair on a schedule: containerd 1.6/1.7 never call CNI GC, so leases
        of sandboxes that died with the node would otherwise stay until the range is
        full. A failure is logged and tried again at the next tick."""
        last_errors: list[str] = []
        while True:
            await asyncio.sleep(self.settings.gc_interval_seconds)
            try:
                reclaimed, errors = await asyncio.to_thread(
                    self._locked, self.reconciler.collect_leaked
                )
            except Exception:
                log.exception("leak repair failed; trying again at the next tick")
                continue
            if errors != last_errors:  # the same reason every tick is said once
                for message in errors:
                    log.warning("leak repair: %s", message)
                last_errors = errors
            if reclaimed:
                self.metrics.reclaimed.inc(len(reclaimed))
                log.info("leak repair: released %d leaked lease(s)", len(reclaimed))
                self.wake.set()  # report the freed addresses now

    def _judge_readiness(self) -> readiness.Readiness:
        manifest = manifest_io.load(self.paths)
        facts = self._cri_facts  # the runtime identified over CRI judges readiness too
        scan = scan_node(
            self.paths, manifest, self.reconciler.prober, node_view=True, runtimes=facts.rules
        )
        base = node_readiness(self.paths, scan, manifest, facts.judged_by)
        files = configs_in_use(scan, facts.judged_by)
        return self.readiness_prober.judge(self.paths, files, base)

    def _sync_taint(self, tainted: bool) -> bool:
        """Put our taint on this node's Node or take it off; True when the Node now
        says what we want. Only this node's own Node is ever written (the chart's
        admission policy refuses anything else to the agent's token)."""
        for _ in range(3):
            node = self.kube.get_node(self.settings.node_name)
            if node is None:
                return False
            taints = readiness.taints_after(node, tainted)
            if taints is None:
                return True
            try:
                version = str(node["metadata"]["resourceVersion"])
                self.kube.set_node_taints(self.settings.node_name, taints, version)
                return True
            except ApiException as error:
                if error.status not in (409, 422):  # 422: the resourceVersion test failed
                    raise
        return False

    async def _readiness_loop(self) -> None:
        """Judge CNI readiness every readiness_seconds and keep the taint in step.
        A failure to judge counts as not ready: a node is untainted only on proof."""
        synced: bool | None = None
        while True:
            try:
                verdict = await asyncio.to_thread(self._judge_readiness)
            except Exception as error:
                log.exception("cannot judge CNI readiness")
                verdict = readiness.Readiness(False, (f"cannot judge readiness: {error}",))
            previous = self._readiness
            if previous is None or previous.ready != verdict.ready:
                self._readiness_since = now_iso()
                log.info("CNI readiness: %s", verdict.message)
            if previous != verdict:
                self._readiness = verdict
                self.wake.set()  # publish it
            # Sync on a change of verdict, after a failed sync, and when the watched
            # Node disagrees (someone removed or added our taint by hand).
            node_tainted = None if self.node is None else readiness.has_taint(self.node)
            if synced != verdict.ready or node_tainted not in (None, not verdict.ready):
                try:
                    done = await asyncio.to_thread(self._sync_taint, not verdict.ready)
                    synced = verdict.ready if done else None
                except Exception:
                    log.exception("cannot update the readiness taint; retrying")
                    synced = None
            await asyncio.sleep(self.settings.readiness_seconds)

    def _watched_dirs(self) -> list[Path]:
        dirs = [
            self.paths.conf_dir,
            self.paths.bin_dir,
            self.paths.networks_dir,
            self.paths.results_dir,
        ]
        if self.paths.networks_dir.is_dir():
            dirs += sorted(p for p in self.paths.networks_dir.iterdir() if p.is_dir())
        return dirs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        watcher = DirectoryWatcher(self._watched_dirs())

        runtime_dirs = {self.paths.conf_dir, self.paths.bin_dir}

        def readable() -> None:
            events = watcher.read_events()
            if any(event.directory in runtime_dirs for event in events):
                # Judge by the runtime's word again once it had time to reload.
                self._dirs_changed_at = time.monotonic()
                loop.call_later(
                    RUNTIME_SETTLE_SECONDS + self.settings.runtime_poll_seconds,
                    self.rejudge_due.set,
                )
            if coalesce.only_attachments(self.paths, events):
                self.attachment_writes.changed()
            elif events:
                self.wake.set()

        loop.add_reader(watcher.fd, readable)
        try:
            while True:
                woken = True
                try:
                    await asyncio.wait_for(
                        coalesce.first_of(self.wake, self.attachments_changed, self.rejudge_due),
                        min(self.settings.resync_seconds, self.settings.heartbeat_seconds),
                    )
                except TimeoutError:
                    woken = False
                try:
                    if woken and not self.wake.is_set():
                        # Watch a new network's lease store before reading it.
                        watcher.directories = self._watched_dirs()
                        watcher.rearm()
                        if self.rejudge_due.is_set():
                            self.rejudge_due.clear()
                            await asyncio.to_thread(self._rejudge)
                        if self.attachments_changed.is_set():
                            await self._refresh_attachments()
                    else:
                        await asyncio.sleep(self.settings.debounce_seconds)
                        self.wake.clear()
                        self.rejudge_due.clear()  # the pass judges anyway
                        if woken or not await asyncio.to_thread(self._renew_heartbeat):
                            self.attachment_writes.cancel()  # the pass reads them anyway
                            self.attachments_changed.clear()
                            await self._pass()
                    watcher.directories = self._watched_dirs()
                    watcher.rearm()
                except Exception:
                    # _pass reports its own failures; this is the API server (first
                    # list, publish) or inotify being away: try again soon.
                    log.exception("agent loop: retrying in 1 s")
                    await asyncio.sleep(1.0)
                    self.wake.set()
        finally:
            loop.remove_reader(watcher.fd)
            watcher.close()

    async def _refresh_attachments(self) -> None:
        """Pod churn only: refresh the last report's counts, or run the full pass
        when something waits for them (see node/coalesce.py)."""
        self.attachments_changed.clear()
        status = self._last_status
        refreshed = None
        if status is not None and self.listed:
            refreshed = await asyncio.to_thread(
                self._locked, coalesce.rescan, self.paths, status, self._last_applied
            )
        if refreshed is None:
            self.wake.set()
            return
        await asyncio.to_thread(self._publish, PassResult(refreshed), {})

    def _rejudge(self) -> None:
        """Once the runtime had time to reload net.d or the bin dir: its word on the
        last report, published if that changes the verdict. Judging needs no pass (the
        files were scanned when they changed); a change of what the runtime says wakes
        one through `_watch_runtime`."""
        status = self._last_status
        if status is None:
            return
        judged = apply_judgement(status, self.runtime_facts())
        events = self._runtime_events.problem_events(judged["problems"])
        self.metrics.update(judged)
        self._publish(PassResult(judged, events), {})

    def _renew_heartbeat(self) -> bool:
        """Between resyncs, a timer wake-up only renews the heartbeat of the last
        report: changes to files wake us through inotify, to objects through kopf,
        so a full pass (scan, hash every managed file) would find nothing new.
        False when a full pass is due instead."""
        resync_due = time.monotonic() - self._last_list > self.settings.resync_seconds
        if resync_due or not self.listed or self._last_status is None:
            return False
        self._publish(PassResult(self._last_status), {})
        return True

    def _relist(self) -> None:
        """A full list of CNINetworks: the authoritative set at this moment. Until
        the first one, no file is removed for being absent (kopf's watch streams
        the initial objects one by one)."""
        listed_rv, items = self.kube.list_networks_with_version()
        self.networks = merge_listing(self.networks, items, listed_rv)
        self.listed = True
        if not self._nodes_listed:
            # Its own Node and host-gw's peers before the first pass (their watches may
            # not have delivered yet). No projection yet is "unknown": host-gw then
            # keeps the routes it finds (an upgrade, before the controller publishes).
            node = self.kube.get_node(self.settings.node_name)
            self.on_node("DELETED" if node is None else "MODIFIED", node)
            routes = self.kube.get_node_routes()
            if routes is not None:
                self.on_node_routes("MODIFIED", routes)
            self._nodes_listed = True

    async def _pass(self) -> None:
        """Reconcile, sync host-gw, publish. Whatever the reconcile raises, the other
        two still run: the report says what failed and the heartbeat goes on, so a
        broken node is visible instead of silent; the next try waits longer each time."""
        now = time.monotonic()
        if not self.listed or now - self._last_list > self.settings.resync_seconds:
            try:
                await asyncio.to_thread(self._relist)
                self._last_list = now
            except Exception as error:
                if not self.listed:
                    raise
                # The API server is away: keep guarding the node with what we know.
                log.warning("cannot list CNINetworks (%s); using the last known set", error)
        snapshot = {name: dict(body) for name, body in self.networks.items()}
        loop = asyncio.get_running_loop()
        self.reconciler.runtimes = self._cri_facts.rules  # judge by the runtime's rules
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(
                self._locked,
                self.reconciler.reconcile,
                snapshot if self.listed else None,
                self.node,
            )
            self._failures = 0
        except Exception as error:
            log.exception("reconcile pass failed; reporting it and retrying")
            self.metrics.pass_failures.inc()
            self.metrics.last_error.set(time.time())
            self._failures += 1
            status = failed_pass_status(self._last_status, self.settings.node_name, error)
            result = PassResult(status, [], retry_delay(self._failures), None)
            result.events = self.reconciler.node_problem_events(status["problems"])
        if result.recheck_in is not None:
            loop.call_later(result.recheck_in + 0.05, self.wake.set)
        if result.applied_specs is not None:
            self._last_applied = result.applied_specs
        try:
            pod_routes = await asyncio.to_thread(self.host_gw.sync, self._last_applied)
        except Exception as error:
            log.exception("host-gw sync failed")
            pod_routes = {"error": f"host-gw sync failed: {error}"}
        if pod_routes is not None:
            result.status["podRoutes"] = pod_routes
        result.status = apply_judgement(result.status, self.runtime_facts())
        result.events = [
            *result.events,
            *self._runtime_events.problem_events(result.status["problems"]),
        ]
        if self._readiness is not None:
            result.status["cniReadiness"] = {
                "ready": self._readiness.ready,
                "message": self._readiness.message[:1000],
                "since": self._readiness_since,
                "taint": readiness.TAINT_KEY,
            }
            probe = self.readiness_prober.report()
            if probe is not None:
                result.status["cniReadiness"]["probe"] = probe
        self.metrics.pass_duration.observe(time.monotonic() - started)
        self.metrics.update(result.status)
        await asyncio.to_thread(self._publish, result, snapshot)
        for event in self.host_gw.take_events():  # a refused pod CIDR, about its Node
            await asyncio.to_thread(
                self.kube.post_event,
                event.involved,
                "Warning",
                event.reason,
                event.message,
                COMPONENT,
            )

    def _publish(self, result: PassResult, snapshot: dict[str, dict[str, Any]]) -> None:
        now = time.monotonic()
        due = now - self._last_publish > self.settings.heartbeat_seconds
        if result.status != self._last_status or due:
            if not self._state_exists:
                self._node_state = self.kube.ensure_node_state(self.node, self.settings.node_name)
                self._state_exists = True
            status = dict(result.status, heartbeatTime=now_iso())
            try:
                self.kube.patch_node_state_status(self.settings.node_name, status)
            except ApiException as error:
                if error.status == 404:  # deleted under us (e.g. by GC): recreate next pass
                    self._state_exists = False
                raise
            self._last_status = result.status
            self._last_publish = now
        for event in result.events:
            body = self._node_state if event.network is None else snapshot.get(event.network)
            if body is not None:
                self.kube.post_event(body, event.type, event.reason, event.message, COMPONENT)


# After a failed pass, wait this long before the next try, doubling up to the cap.
RETRY_FIRST_SECONDS = 1.0
RETRY_CAP_SECONDS = 60.0


def retry_delay(failures: int) -> float:
    """1, 2, 4, ... 60 s: a pass that fails for good (a full disk) is retried without
    spinning, and the report stays current in between (heartbeats)."""
    return min(RETRY_CAP_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** max(0, failures - 1))


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def merge_listing(
    current: dict[str, dict[str, Any]], items: list[dict[str, Any]], listed_rv: int
) -> dict[str, dict[str, Any]]:
    """Merge a fresh list into what watch events already delivered, keeping the
    newer copy of each object (events may overtake a list in flight)."""
    merged = {}
    listed = {item["metadata"]["name"]: item for item in items}
    for name, item in listed.items():
        known = current.get(name)
        merged[name] = known if known is not None and _rv(known) > _rv(item) else item
    for name, known in current.items():
        if name not in listed and _rv(known) > listed_rv:
            merged[name] = known  # created after the list was taken
    return merged


def build_registry(agent: Agent) -> kopf.OperatorRegistry:
    registry = kopf_runtime.new_registry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_runtime.quiet_kopf_objects()
        settings.posting.enabled = False  # our Events say what happened; kopf's would be noise
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30
        await agent.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await agent.stop()

    @kopf.on.event(api.GROUP, api.VERSION, api.NETWORK_PLURAL, registry=registry)
    def network_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        agent.on_network(event.get("type"), dict(body))

    @kopf.on.event(api.GROUP, api.VERSION, noderoutes.PLURAL, registry=registry)
    async def node_routes_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        agent.on_node_routes(event.get("type"), dict(body))

    return registry


def run(settings: AgentSettings) -> None:
    agent = Agent(settings)
    kopf_runtime.run(build_registry(agent), settings.liveness_endpoint)
