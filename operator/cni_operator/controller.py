"""The cluster controller: validates CNINetworks, aggregates node reports into
their status (Ready / Shadowed / SwitchBlocked / Degraded and counts), posts
Events on transitions, and holds the finalizer until every node is clean.

Thin kopf handlers over `conditions.build_status` and the agents' CNINodeStates.
The per-node gate itself runs in each agent, at the moment it would write, with
the attachments it reads from the node: no stale copy of cluster state can let
an unsafe change through. The controller turns those per-node holds into the
`SwitchBlocked` condition naming the fields and the nodes.

It also publishes the slim projection of the Nodes host-gw needs (`noderoutes`): one
`CNINodeRoutes` object, rewritten only when a node's pod CIDRs, InternalIPs or uid
change, or a node joins or leaves; never on a heartbeat. The agents watch it instead
of every Node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from cni_operator import api, kopf_runtime, noderoutes
from cni_operator.api import SpecError, parse_spec
from cni_operator.conditions import (
    IP_POOL_PRESSURE,
    READY,
    SHADOWED,
    build_status,
    network_entry,
    same_status,
)
from cni_operator.kube import Kube
from cni_operator.kube_time import now_iso, parse_rfc3339
from cni_operator.metrics import ControllerMetrics
from cni_operator.migration_run import NodeDriver, run_migration
from cni_operator.pools import spec_thresholds
from cni_operator.rendering import NodeFacts, render, selects
from cni_operator.revisions import with_revision

log = logging.getLogger("cniwarden.controller")
COMPONENT = "cniwarden-operator"


@dataclass
class ControllerSettings:
    kubeconfig: str | None = None
    # An agent silent for this long no longer holds up a deletion.
    stale_agent_seconds: float = 120.0
    aggregate_interval: float = 0.2
    recheck_seconds: float = 30.0
    liveness_endpoint: str | None = None
    sources: api.BinarySourcePolicy = field(default_factory=api.BinarySourcePolicy)
    metrics_address: str = ""  # host:port of /metrics; empty: off
    # Run CNIMigrations (needs the chart's migration RBAC: nodes patch, pods list,
    # pods/eviction create); off by default.
    migrations: bool = False
    migration_interval: float = 3.0
    # The Node projection (CNINodeRoutes): a full list of the Nodes this often, on top
    # of the watch (which cannot tell a Node deleted while it was reconnecting).
    routes_resync_seconds: float = 600.0


def slim_node(body: Any) -> dict[str, Any]:
    """What the controller keeps of a Node: its name, labels and pod CIDRs."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    return {
        "metadata": {"name": meta.get("name"), "labels": dict(meta.get("labels") or {})},
        "spec": {"podCIDR": spec.get("podCIDR"), "podCIDRs": list(spec.get("podCIDRs") or [])},
    }


def _content(report: dict[str, Any]) -> dict[str, Any]:
    """A node report without its heartbeat."""
    return {k: v for k, v in report.items() if k != "heartbeatTime"}


# A heartbeat further ahead of this clock than this is a broken clock or a lie, not
# skew between machines: it would otherwise never go stale.
CLOCK_SKEW_SECONDS = 30.0


@dataclass
class SpecCheck:
    error: str | None
    selected: list[str]
    render_errors: list[str] = field(default_factory=list)

    @property
    def problem(self) -> str | None:
        if self.error:
            return self.error
        return "; ".join(self.render_errors) or None


@dataclass
class Controller:
    settings: ControllerSettings
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)
    routes: noderoutes.Projection = field(default_factory=noderoutes.Projection)
    routes_wake: asyncio.Event = field(default_factory=asyncio.Event)
    _routes_task: asyncio.Task[None] | None = None
    _routes_published: tuple[Any, ...] | None = None  # what the stored object lists
    _routes_listed_at: float = float("-inf")

    _kube: Kube | None = None

    @property
    def kube(self) -> Kube:
        """The API client, made on first use (the views need none)."""
        if self._kube is None:
            self._kube = Kube(self.settings.kubeconfig)
        return self._kube

    # -------------------------------------------------------------- views
    def selected_nodes(self, spec: api.NetworkSpec) -> list[str]:
        return sorted(
            name
            for name, node in self.nodes.items()
            if selects(spec.nodeSelector, (node.get("metadata") or {}).get("labels") or {})
        )

    def check_spec(self, name: str, body: dict[str, Any]) -> SpecCheck:
        """The spec's own error, the selected nodes, and per-node render errors."""
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
        except SpecError as error:
            return SpecCheck(str(error), [])
        refusals = self.settings.sources.refusals(spec)
        if refusals:
            return SpecCheck("; ".join(refusals), [])
        check = SpecCheck(None, self.selected_nodes(spec))
        for node in check.selected:
            try:
                render(name, spec, NodeFacts.from_node(self.nodes[node]))
            except SpecError as error:
                check.render_errors.append(str(error))
        return check

    def compute_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        generation = int(body["metadata"].get("generation") or 0)
        check = self.check_spec(name, body)
        reports = {
            n: self.reports[n]
            for n in check.selected
            if n in self.reports and not self.is_stale(self.reports[n])
        }
        previous = (body.get("status") or {}).get("conditions") or []
        status = build_status(
            network=name,
            generation=generation,
            selected=check.selected,
            reports=reports,
            spec_error=check.problem,
            previous_conditions=previous,
            now=now_iso(),
            pressure_threshold=spec_thresholds(dict(body.get("spec") or {}))[0],
        )
        ready = next(c for c in status["conditions"] if c["type"] == READY)
        revisions = with_revision(
            (body.get("status") or {}).get("revisions") or [],
            generation=generation,
            spec=dict(body.get("spec") or {}),
            ready=ready["status"] == "True" and check.problem is None and bool(check.selected),
            now=now_iso(),
        )
        if revisions:
            status["revisions"] = revisions
            status["revision"] = revisions[-1]["revision"]
        return status

    def is_stale(self, report: dict[str, Any]) -> bool:
        """A report that no longer vouches for its node: its agent has been silent for
        too long, or its heartbeat is missing, unparsable or in the future (any of
        which would otherwise let one bad agent hold up every deletion forever)."""
        beat = parse_rfc3339(report.get("heartbeatTime"))
        if beat is None:
            return True
        age = time.time() - beat
        return age > self.settings.stale_agent_seconds or age < -CLOCK_SKEW_SECONDS

    def on_report(self, node: str, report: dict[str, Any] | None) -> None:
        """Store a node's CNINodeState status (None: deleted). Re-aggregate only when
        it can change a network's status: agents renew heartbeatTime every few
        seconds, and a renewal alone matters only to a report that had gone stale
        (the periodic recheck notices reports that go stale)."""
        old = self.reports.get(node)
        if report is None:
            self.reports.pop(node, None)
            self.mark()
            return
        self.reports[node] = report
        if old is None or self.is_stale(old) or _content(old) != _content(report):
            self.mark()

    # ------------------------------------------------------------ deletion
    def nodes_not_clean(self, name: str) -> list[str]:
        """Nodes whose agent still reports our files (or quarantined files) for `name`.
        Nodes that are gone, and agents silent for too long, do not count."""
        waiting = []
        for node, report in self.reports.items():
            if node not in self.nodes:
                continue
            if self.is_stale(report):
                continue
            managed = {m.get("network") for m in report.get("managedFiles") or []}
            quarantined = {q.get("network") for q in report.get("quarantined") or []}
            entry = network_entry(report, name)
            if (
                name in managed
                or name in quarantined
                or (entry and entry.get("state") == "Blocked")
            ):
                waiting.append(node)
        return sorted(waiting)

    # ----------------------------------------------------------- aggregator
    async def start(self) -> None:
        if self.settings.metrics_address:
            self.metrics.serve(self.settings.metrics_address)
        self._task = asyncio.create_task(self._run())
        self._routes_task = asyncio.create_task(self._publish_routes_loop())
        self.routes_wake.set()  # a first list and publish, even with no Node event

    async def stop(self) -> None:
        for task in (self._routes_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.metrics.close()

    # ------------------------------------------------------ Node projection
    def on_node_route(self, event_type: str | None, body: dict[str, Any]) -> None:
        """A Node event for the projection: wake the publisher only on a change of what
        it lists (a heartbeat changes nothing there)."""
        if self.routes.on_node(event_type, body):
            self.routes_wake.set()

    async def _publish_routes_loop(self) -> None:
        """Publish the projection after a full list of the Nodes, then whenever it
        changes (coalesced over `aggregate_interval`), and list again every
        `routes_resync_seconds`. A failure is logged and tried again."""
        while True:
            with contextlib.suppress(TimeoutError):  # resync due: list again
                await asyncio.wait_for(self.routes_wake.wait(), self.settings.routes_resync_seconds)
            await asyncio.sleep(self.settings.aggregate_interval)
            self.routes_wake.clear()
            try:
                await self._publish_routes()
            except Exception:
                log.exception("publishing the Node projection failed; retrying")
                await asyncio.sleep(1.0)
                self.routes_wake.set()

    async def _publish_routes(self) -> None:
        now = time.monotonic()
        if not self.routes.listed or now - self._routes_listed_at > (
            self.settings.routes_resync_seconds
        ):
            listed_rv, items = await asyncio.to_thread(self.kube.list_nodes_with_version)
            first = not self.routes.listed
            self.routes.merge_listing(items, listed_rv)
            self._routes_listed_at = now
            if first:  # the networks' selection may now be computed (see _run)
                for item in items:
                    name = (item.get("metadata") or {}).get("name")
                    if name and name not in self.nodes and name in self.routes.nodes:
                        self.nodes[name] = slim_node(item)
                self.mark()
        peers = self.routes.snapshot()
        if peers == self._routes_published:
            return
        exists = True
        if self._routes_published is None:  # first time: maybe a previous run wrote it
            stored = await asyncio.to_thread(self.kube.get_node_routes)
            exists = stored is not None
            if not noderoutes.needs_write(stored, peers):
                self._routes_published = peers
                return
        spec = noderoutes.spec_of(peers)
        size = noderoutes.encoded_size(spec)
        if size > noderoutes.MAX_BYTES:
            log.error(
                "the Node projection of %d nodes is %d bytes, over the %d-byte limit: not "
                "written (agents keep the last published list)",
                len(peers),
                size,
                noderoutes.MAX_BYTES,
            )
            self._routes_published = peers  # said once per change, not every wake-up
            return
        await asyncio.to_thread(self.kube.write_node_routes, spec, exists)
        log.info("published the Node projection: %d nodes, %d bytes", len(peers), size)
        self._routes_published = peers

    def mark(self, names: set[str] | None = None) -> None:
        self.dirty |= set(self.networks) if names is None else names
        self.wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), self.settings.recheck_seconds)
            except TimeoutError:
                self.mark()  # a silent agent sends no event: look again now and then
            await asyncio.sleep(self.settings.aggregate_interval)
            self.wake.clear()
            if not self.routes.listed:
                # Which nodes a network selects needs every Node: the watch streams them
                # one by one, and a status computed from the first few would call a
                # network Ready on them alone. The first full list (the projection's)
                # marks every network again.
                continue
            names, self.dirty = self.dirty, set()
            for name in sorted(names):
                body = self.networks.get(name)
                if body is None:
                    continue
                try:
                    await self._update(name, body)
                except Exception:
                    log.exception("status update of %s failed; retrying", name)
                    self.mark({name})
                    await asyncio.sleep(1.0)

    async def _update(self, name: str, body: dict[str, Any]) -> None:
        status = self.compute_status(name, body)
        self.metrics.update(name, status)
        old = body.get("status") or {}
        if same_status(old, status):
            return
        await asyncio.to_thread(self.kube.patch_network_status, name, status)
        body["status"] = status
        await self._pressure_event(body, old, status)
        old_shadow: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == SHADOWED), {}
        )
        new_shadow = next(c for c in status["conditions"] if c["type"] == SHADOWED)
        if new_shadow["status"] == "True" and (
            old_shadow.get("status") != "True" or old_shadow.get("message") != new_shadow["message"]
        ):
            await asyncio.to_thread(
                self.kube.post_event,
                body,
                "Warning",
                "Shadowed",
                new_shadow["message"],
                COMPONENT,
            )

    async def _pressure_event(
        self, body: dict[str, Any], old: dict[str, Any], status: dict[str, Any]
    ) -> None:
        """An Event on each transition of IPPoolPressure (not on every usage change)."""
        before: dict[str, Any] = next(
            (c for c in old.get("conditions") or [] if c.get("type") == IP_POOL_PRESSURE), {}
        )
        after = next(c for c in status["conditions"] if c["type"] == IP_POOL_PRESSURE)
        if before.get("status", "False") == after["status"]:
            return
        pressed = after["status"] == "True"
        await asyncio.to_thread(
            self.kube.post_event,
            body,
            "Warning" if pressed else "Normal",
            "IPPoolPressure" if pressed else "IPPoolPressureRelieved",
            after["message"],
            COMPONENT,
        )


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf_runtime.new_registry()
    plural = (api.GROUP, api.VERSION, api.NETWORK_PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_runtime.quiet_kopf_objects()
        settings.persistence.finalizer = api.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="cniwarden.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="cniwarden.io", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    @kopf.on.event(*plural, registry=registry)
    def network_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        name = body["metadata"]["name"]
        if event.get("type") == "DELETED":
            controller.networks.pop(name, None)
            controller.metrics.update(name, None)
            return
        controller.networks[name] = dict(body)
        controller.mark({name})

    @kopf.on.create(*plural, id="validate", registry=registry)
    @kopf.on.update(*plural, id="validate", field="spec", registry=registry)
    @kopf.on.resume(*plural, id="validate", registry=registry)
    def validate(body: kopf.Body, name: str, **_: Any) -> None:
        """Validate the spec once per change; the verdict lands in the conditions."""
        check = controller.check_spec(name, dict(body))
        if check.error:
            # Permanent: the spec must change; the last good files stay on the nodes.
            kopf.warn(body, reason="InvalidSpec", message=check.error)
            raise kopf.PermanentError(check.error)
        if check.render_errors:
            # Depends on the nodes (e.g. a podCIDR not allocated yet): the conditions
            # follow the nodes; say it once here.
            kopf.warn(body, reason="NotRenderable", message="; ".join(check.render_errors))

    @kopf.on.delete(*plural, id="cleanup-nodes", registry=registry)
    def cleanup_nodes(name: str, **_: Any) -> None:
        """Hold the finalizer until every live node has removed our files."""
        waiting = controller.nodes_not_clean(name)
        if waiting:
            raise kopf.TemporaryError(
                f"waiting for {len(waiting)} node(s) to remove network {name}: "
                + ", ".join(waiting[:10]),
                delay=1,
            )

    @kopf.on.event("", "v1", "nodes", registry=registry)
    async def node_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        name = body["metadata"]["name"]
        old = controller.nodes.get(name)
        controller.on_node_route(event.get("type"), dict(body))
        if event.get("type") == "DELETED":
            controller.nodes.pop(name, None)
            controller.mark()
            return
        slim = slim_node(body)
        controller.nodes[name] = slim
        if old != slim:  # heartbeats change nothing we use
            controller.mark()

    @kopf.on.event(api.GROUP, api.VERSION, api.NODE_STATE_PLURAL, registry=registry)
    def node_state_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        deleted = event.get("type") == "DELETED"
        controller.on_report(
            body["metadata"]["name"], None if deleted else dict(body.get("status") or {})
        )

    if controller.settings.migrations:
        driver = NodeDriver(controller.kube)

        @kopf.timer(
            api.GROUP,
            api.VERSION,
            api.MIGRATION_PLURAL,
            interval=controller.settings.migration_interval,
            registry=registry,
        )
        async def migration_timer(body: kopf.Body, **_: Any) -> None:
            """One pass per interval: the recorded step decides what runs (restart-safe)."""
            await asyncio.to_thread(run_migration, controller.kube, driver, dict(body))

    return registry


def run(settings: ControllerSettings) -> None:
    controller = Controller(settings)
    kopf_runtime.run(build_registry(controller), settings.liveness_endpoint)
