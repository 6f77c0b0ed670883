"""Carry out a CNIMigration's per-node steps against the API server.

The decisions are the pure machine's (`migration.steps.decide`): this module only
observes a node (Node, its pods, its CNINodeState), does the one action decided,
and records the outcome, with an Event per finished step. Cordon and uncordon are
Node patches; eviction goes through the Eviction API, so every PodDisruptionBudget
is respected (a 429 is waited out, never bypassed); the switch sets the node label
the target CNINetwork selects by, and the rollback removes it (the agent then
removes the new file and restores the quarantined old one).

Verify: the node's agent must report the new network in use and healthy; with
`verify.probeImage` set, a probe pod on the node must also reach its peers
(`migration.probe`: the peers, the pod, the verdict are decided there).

Synchronous: call from a thread (`asyncio.to_thread`), like `Kube`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cni_operator import api
from cni_operator.api import NetworkSpec
from cni_operator.kube import EVICTION_BLOCKED, Kube
from cni_operator.kube_time import now_iso
from cni_operator.migration import probe
from cni_operator.migration.plan import (
    SWITCH_LABEL,
    EvictionPlan,
    NodeInfo,
    NodeNetworks,
    acknowledgement,
    agent_word_on,
    check_compatibility,
    eviction_plan,
    initial_records,
    old_network_on,
    runtime_view,
    selected,
)
from cni_operator.migration.probe import (
    PROBE_LABEL,
    PeerChoice,
    choose_peers,
    judge,
    peers_of,
    probe_pod,
    probe_pod_name,
)
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import (
    Action,
    Halt,
    NodeFacts,
    NodeRecord,
    Step,
    advance,
    apply_commands,
    begin_rollback,
    build_status,
    decide,
    fail,
    mark_done,
    plan_work,
    start,
    step_age,
    vanish,
)

# How many steps one call may move a node through (each needs its effect observed).
MAX_STEPS_PER_PASS = 12
AGAIN, VERIFIED, WAIT, FAILED = "again", "verified", "wait", "failed"
# Where probe pods run (Events about cluster-scoped objects live there too).
PROBE_NAMESPACE = "default"


@dataclass
class NodeOutcome:
    """What one pass did to one node."""

    record: NodeRecord
    failed_step: Step | None = None  # set when a step failed (the node rolls back)
    cause: str = ""
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    waiting: str = ""  # why the node did not move further in this pass


class NodeGoneError(Exception):
    """The Node of a record was deleted."""


class NodeDriver:
    """One node's observation and actions, through the thin `Kube` client."""

    def __init__(
        self,
        kube: Kube,
        *,
        clock: Callable[[], float] = time.time,
        stamp: Callable[[], str] = now_iso,
        probe_namespace: str = PROBE_NAMESPACE,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.stamp = stamp
        self.probe_namespace = probe_namespace
        self._others: Sequence[NodeRecord] = ()

    def observe(self, node: str, to_object: str) -> tuple[NodeFacts, EvictionPlan, bool]:
        """The node's facts now, its eviction plan, and whether its report is healthy."""
        obj = self.kube.get_node(node)
        if obj is None:
            raise NodeGoneError(f"node {node} no longer exists")
        pods = self.kube.list_pods(f"spec.nodeName={node}", "")
        plan = eviction_plan(pods)
        view = runtime_view(self.kube.get_node_state(node))
        labels = (obj.get("metadata") or {}).get("labels") or {}
        facts = NodeFacts(
            unschedulable=bool((obj.get("spec") or {}).get("unschedulable")),
            pods_to_evict=plan.remaining,
            effective_network=view.network,
            switch_labelled=labels.get(SWITCH_LABEL) == to_object,
        )
        return facts, plan, view.healthy

    def evict(self, plan: EvictionPlan, grace_seconds: int | None) -> list[str]:
        """One eviction request per pod; the PDB refusals, named, for the status."""
        blocked = []
        for pod in plan.evict:
            outcome, message = self.kube.evict_pod(pod.namespace, pod.name, pod.uid, grace_seconds)
            if outcome == EVICTION_BLOCKED:
                blocked.append(f"{pod.namespace}/{pod.name}: {message}")
        return blocked

    def drive(
        self,
        spec: MigrationSpec,
        record: NodeRecord,
        to_network: str,
        to_object: str,
        others: Sequence[NodeRecord] = (),
    ) -> NodeOutcome:
        """Move one node as far as its observed state allows in this pass.
        `to_network`: the target's CNI network name (what the agent reports);
        `to_object`: the target CNINetwork's object name (the switch label's value);
        `others`: the migration's other nodes (the probe's peers are found there)."""
        out = NodeOutcome(record)
        self._others = others
        for _ in range(MAX_STEPS_PER_PASS):
            current = out.record
            facts, plan, healthy = self.observe(current.name, to_object)
            action = decide(current, facts, to_network)
            if action is Action.NOTHING:
                return out
            if action is Action.ADVANCE:
                self._advance(out)
                continue
            result, text = self._act(
                action, spec, current, plan, healthy=healthy, to_object=to_object
            )
            if result == AGAIN:
                continue  # observe again: the effect shows, then the step advances
            if result == VERIFIED:
                self._advance(out)
                if text:
                    out.events.append(("Normal", "Probe", f"node {current.name}: {text}"))
                continue
            if result == WAIT:
                out.waiting = text
                return out
            out.failed_step = current.step
            out.cause = text
            out.record = fail(current, text, self.stamp())
            out.events.append(("Warning", f"{current.step}Failed", f"node {current.name}: {text}"))
            if current.step in (Step.RESTORE, Step.ROLLBACK_UNCORDON):
                return out  # the rollback itself failed: halted there, a resume retries
        return out

    def _acknowledge(self, node: str, to_object: str) -> None:
        """Acknowledge the target's current generation for this drained node."""
        network = self.kube.get_network(to_object)
        if network is None:
            return  # the switch then times out, and the node is rolled back
        meta = network.get("metadata") or {}
        wanted = acknowledgement(
            meta.get("annotations") or {}, int(meta.get("generation") or 0), node
        )
        if wanted is not None:
            self.kube.set_network_annotations(to_object, wanted)

    def _advance(self, out: NodeOutcome) -> None:
        before = out.record.step
        out.record = advance(out.record, self.stamp())
        out.events.append(("Normal", str(before), f"node {out.record.name}: {before} done"))

    def _act(
        self,
        action: Action,
        spec: MigrationSpec,
        record: NodeRecord,
        plan: EvictionPlan,
        *,
        healthy: bool,
        to_object: str,
    ) -> tuple[str, str]:
        """Do one action: (AGAIN | VERIFIED, "") to go on, (WAIT, why) to wait for
        the next pass, (FAILED, cause) when the step failed."""
        node = record.name
        if action is Action.CORDON:
            self.kube.set_node_unschedulable(node, True)
            return AGAIN, ""
        if action is Action.UNCORDON:
            self.kube.set_node_unschedulable(node, False)
            return AGAIN, ""
        age = step_age(record, self.clock())
        expired = age is not None and age > spec.drain.timeoutSeconds
        if action is Action.EVICT:
            if expired:
                left = ", ".join(f"{p.namespace}/{p.name}" for p in (*plan.evict, *plan.leaving))
                return (
                    FAILED,
                    f"drain timed out after {spec.drain.timeoutSeconds} s; pods left: {left}",
                )
            blocked = self.evict(plan, spec.drain.gracePeriodSeconds)
            if blocked:
                return WAIT, "evictions refused by a PodDisruptionBudget: " + "; ".join(blocked)
            return WAIT, f"{plan.remaining} pod(s) asked to leave, waiting for them to go"
        if action is Action.SWITCH:
            if expired:
                word = agent_word_on(self.kube.get_node_state(node), to_object)
                return FAILED, (
                    f"the node's agent did not report network {to_object} in use within "
                    f"{spec.drain.timeoutSeconds} s of the switch "
                    + (f"(it reports {word})" if word else "(a held gate, or a missing binary)")
                )
            self._acknowledge(node, to_object)
            self.kube.set_node_label(node, SWITCH_LABEL, to_object)
            return WAIT, "switch label set, waiting for the node's agent to report the new network"
        if action is Action.RESTORE:
            # Removing the label is a switch too (pods left on the new network hold it).
            self._acknowledge(node, to_object)
            self.kube.set_node_label(node, SWITCH_LABEL, None)
            if expired:
                return FAILED, (
                    f"the node's agent still reports network {to_object} "
                    f"{spec.drain.timeoutSeconds} s after the switch label was removed"
                )
            return WAIT, "switch label removed, waiting for the old network to be restored"
        if not healthy:
            return FAILED, "the node's agent reports the new network unhealthy"
        if spec.verify.probeImage is not None:
            return self._probe(spec, record, expired=expired)
        return VERIFIED, ""

    def _probe(self, spec: MigrationSpec, record: NodeRecord, *, expired: bool) -> tuple[str, str]:
        """Start the node's probe pod, or read its verdict; the pod is deleted once
        judged. Fails after `drain.timeoutSeconds` in Verify (the pod's own
        activeDeadlineSeconds is the same)."""
        node, namespace = record.name, self.probe_namespace
        name = probe_pod_name(node, record.attempt)
        pod = self.kube.get_pod(namespace, name)
        peers = None if pod is None else peers_of(pod)
        if pod is None or peers is None:
            if pod is not None:  # not one of ours (no peers annotation): replace it
                self.kube.delete_pod(namespace, name)
                return WAIT, f"pod {namespace}/{name} without probe peers is being replaced"
            if expired:
                return FAILED, f"no probe verdict within {spec.drain.timeoutSeconds} s"
            choice = self._choose_peers(spec, node)
            body = probe_pod(
                name,
                namespace,
                node,
                image=str(spec.verify.probeImage),
                peers=choice.peers,
                deadline_seconds=spec.drain.timeoutSeconds,
            )
            self.kube.create_pod(body)
            skipped = f" (skipped: {'; '.join(choice.skipped)})" if choice.skipped else ""
            return WAIT, f"probe pod {namespace}/{name} started{skipped}"
        phase = (pod.get("status") or {}).get("phase")
        log = self.kube.pod_log(namespace, name) if phase in ("Succeeded", "Failed") else ""
        node_obj = self.kube.get_node(node) or {}
        verdict = judge(pod, log, peers, NodeInfo.from_node(node_obj).pod_cidrs)
        if verdict.state == probe.PASSED:
            self.kube.delete_pod(namespace, name)
            return VERIFIED, verdict.notes
        if verdict.state == probe.FAILED:
            self.kube.delete_pod(namespace, name)
            return FAILED, f"probe pod {namespace}/{name}: {verdict.cause}"
        if expired:
            self.kube.delete_pod(namespace, name)
            return FAILED, (
                f"probe pod {namespace}/{name} did not finish within "
                f"{spec.drain.timeoutSeconds} s ({verdict.cause})"
            )
        return WAIT, f"waiting for probe pod {namespace}/{name}: {verdict.cause}"

    def _choose_peers(self, spec: MigrationSpec, node: str) -> PeerChoice:
        """Peers among Running pods on the migration's other nodes."""
        migrated = [r.name for r in self._others if r.step is Step.DONE]
        unmigrated = [
            r.name for r in self._others if r.step in (Step.PENDING, Step.ROLLED_BACK, Step.SKIPPED)
        ]
        pods = self.kube.list_pods("status.phase=Running", f"!{PROBE_LABEL}")
        return choose_peers(spec.verify.peers, node, migrated, unmigrated, pods)


# --- one pass over a whole migration ----------------------------------------------------


@dataclass
class PassResult:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)


def _refused(reasons: list[str], generation: int) -> PassResult:
    message = "; ".join(reasons)
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "phase": "Refused",
        "refusals": reasons,
        "conditions": [
            {
                "type": "Halted",
                "status": "True",
                "lastTransitionTime": now_iso(),
                "reason": "Refused",
                "message": message[:4096],
            }
        ],
    }
    return PassResult(status, [("Warning", "Refused", message[:1024])])


def _network_spec(kube: Kube, name: str, role: str) -> tuple[NetworkSpec | None, str]:
    obj = kube.get_network(name)
    if obj is None:
        return None, f"{role}.cniNetwork {name} does not exist"
    try:
        return api.parse_spec(obj.get("spec") or {}), ""
    except (api.SpecError, ValidationError) as error:
        return None, f"{role}.cniNetwork {name} has an invalid spec: {error}"


def _first_records(
    kube: Kube, spec: MigrationSpec, to_spec: NetworkSpec
) -> tuple[list[NodeRecord], list[str]]:
    """The node list, fixed at the start, or every reason the migration is refused."""
    reasons: list[str] = []
    from_spec = None
    if spec.source.cniNetwork is not None:
        from_spec, why = _network_spec(kube, spec.source.cniNetwork, "from")
        if from_spec is None:
            return [], [why]
    skip = set(spec.skipNodes)
    nodes = [
        n
        for n in selected((NodeInfo.from_node(o) for o in kube.list_nodes()), spec.nodeSelector)
        if n.name not in skip
    ]
    if not nodes:
        reasons.append("nodeSelector (less skipNodes) selects no node")
    networks = [
        NodeNetworks(
            n,
            None
            if from_spec is not None
            else old_network_on(kube.get_node_state(n.name), str(spec.source.networkName)),
        )
        for n in nodes
    ]
    reasons += [str(r) for r in check_compatibility(spec, to_spec, networks, from_spec)]
    return ([] if reasons else initial_records(nodes, spec)), reasons


def migration_pass(kube: Kube, driver: NodeDriver, body: Mapping[str, Any]) -> PassResult:
    """Read the CNIMigration, apply its commands, move the nodes the plan names as
    far as they go now, and return the new status with the Events to post. Before
    any node has started, every pass re-checks compatibility (a fix is picked up);
    after that the node list and the from/to pair are fixed (the CRD makes them
    immutable)."""
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    status = body.get("status") or {}
    try:
        spec = MigrationSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        return _refused([f"invalid spec: {error}"], generation)
    to_spec, why = _network_spec(kube, spec.to.cniNetwork, "to")
    if to_spec is None:
        return _refused([why], generation)
    to_network = to_spec.cni_name(spec.to.cniNetwork)
    records = [NodeRecord.from_status(n) for n in status.get("nodes") or []]
    halt = Halt.from_status(status.get("halt"))
    events: list[tuple[str, str, str]] = []
    if not records:
        records, reasons = _first_records(kube, spec, to_spec)
        if reasons:
            return _refused(reasons, generation)
        events.append(("Normal", "Planned", f"{len(records)} node(s) to migrate"))
    commands = apply_commands(spec, records, halt)
    records, halt = list(commands.records), commands.halt
    events += [("Normal", "Command", note) for note in commands.notes]
    work = plan_work(spec, records, halt)
    by_name = {r.name: r for r in records}
    stamp = now_iso()
    for name in work.rollback_nodes:
        by_name[name] = begin_rollback(by_name[name], stamp)
    sequence = 1 + max((r.completed or 0 for r in records), default=0)
    waiting: dict[str, str] = {}
    for name in (*work.continue_nodes, *work.start_nodes, *work.rollback_nodes):
        try:
            if name in work.start_nodes:
                facts, _, _ = driver.observe(name, spec.to.cniNetwork)
                by_name[name] = start(by_name[name], facts, stamp)
            out = driver.drive(
                spec, by_name[name], to_network, spec.to.cniNetwork, list(by_name.values())
            )
        except NodeGoneError:
            by_name[name] = vanish(by_name[name], stamp)
            events.append(("Warning", "NodeGone", f"node {name} was deleted; left out"))
            continue
        record = out.record
        if record.step is Step.DONE and record.completed is None:
            record = mark_done(record, sequence)
            sequence += 1
        by_name[name] = record
        events += out.events
        if out.waiting:
            waiting[name] = out.waiting
        if out.failed_step is not None and halt is None:
            halt = Halt(name, out.failed_step, out.cause, spec.resume)
            events.append(("Warning", "Halted", halt.message))
    records = [by_name[r.name] for r in records]
    phase = plan_work(spec, records, halt).phase
    new_status = build_status(
        records,
        halt,
        phase,
        generation=generation,
        now=stamp,
        old_conditions=status.get("conditions") or [],
    )
    new_status["waiting"] = [f"{node}: {why}" for node, why in sorted(waiting.items())]
    new_status["refusals"] = None
    return PassResult(new_status, events)


COMPONENT = "cniwarden-controller"
FINISHED = frozenset({"Succeeded", "RolledBack"})


def run_migration(kube: Kube, driver: NodeDriver, body: Mapping[str, Any]) -> str | None:
    """One pass, its status written and its Events posted; the new phase. A finished
    migration is left alone until its spec changes (e.g. `rollback: true`)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    generation = int(meta.get("generation") or 0)
    if status.get("phase") in FINISHED and status.get("observedGeneration") == generation:
        return None
    result = migration_pass(kube, driver, body)
    kube.patch_migration_status(str(meta.get("name")), result.status)
    obj = {**body, "kind": api.MIGRATION_KIND, "apiVersion": api.API_VERSION}
    for kind, reason, message in result.events:
        kube.post_event(obj, kind, reason, message, COMPONENT)
    return str(result.status.get("phase"))
