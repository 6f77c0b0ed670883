"""Carry out a CNIMigration's per-node steps against the API server.

The decisions are the pure machine's (`migration.steps.decide`): this module only
observes a node (Node, its pods, its CNINodeState), does the one action decided,
and records the outcome, with an Event per finished step. Cordon and uncordon are
Node patches; eviction goes through the Eviction API, so every PodDisruptionBudget
is respected (a 429 is waited out, never bypassed); the switch sets the node label
the target CNINetwork selects by, and the rollback removes it (the agent then
removes the new file and restores the quarantined old one).

Not built yet (docs/migration.md): the automatic per-node acknowledgement of the
switch gate, and the probe pod of Verify. A Verify with `verify.probeImage` set
fails with that cause, so the node is rolled back, never reported verified.

Synchronous: call from a thread (`asyncio.to_thread`), like `Kube`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cni_operator.kube import EVICTION_BLOCKED, Kube
from cni_operator.kube_time import now_iso
from cni_operator.migration.plan import SWITCH_LABEL, EvictionPlan, eviction_plan, runtime_view
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import (
    Action,
    NodeFacts,
    NodeRecord,
    Step,
    advance,
    decide,
    fail,
    step_age,
)

# How many steps one call may move a node through (each needs its effect observed).
MAX_STEPS_PER_PASS = 12
AGAIN, VERIFIED, WAIT, FAILED = "again", "verified", "wait", "failed"


@dataclass
class NodeOutcome:
    """What one pass did to one node."""

    record: NodeRecord
    failed_step: Step | None = None  # set when a step failed (the node rolls back)
    cause: str = ""
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    waiting: str = ""  # why the node did not move further in this pass


class NodeDriver:
    """One node's observation and actions, through the thin `Kube` client."""

    def __init__(
        self,
        kube: Kube,
        *,
        clock: Callable[[], float] = time.time,
        stamp: Callable[[], str] = now_iso,
    ) -> None:
        self.kube = kube
        self.clock = clock
        self.stamp = stamp

    def observe(self, node: str, to_object: str) -> tuple[NodeFacts, EvictionPlan, bool]:
        """The node's facts now, its eviction plan, and whether its report is healthy."""
        obj = self.kube.get_node(node)
        if obj is None:
            raise LookupError(f"node {node} no longer exists")
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
        self, spec: MigrationSpec, record: NodeRecord, to_network: str, to_object: str
    ) -> NodeOutcome:
        """Move one node as far as its observed state allows in this pass.
        `to_network`: the target's CNI network name (what the agent reports);
        `to_object`: the target CNINetwork's object name (the switch label's value)."""
        out = NodeOutcome(record)
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
                return FAILED, (
                    f"the node's agent did not report network {to_object} in use within "
                    f"{spec.drain.timeoutSeconds} s of the switch "
                    "(a held gate, or a missing binary)"
                )
            self.kube.set_node_label(node, SWITCH_LABEL, to_object)
            return WAIT, "switch label set, waiting for the node's agent to report the new network"
        if action is Action.RESTORE:
            self.kube.set_node_label(node, SWITCH_LABEL, None)
            return WAIT, "switch label removed, waiting for the old network to be restored"
        if spec.verify.probeImage is not None:
            return FAILED, "verify with a probe pod (verify.probeImage) is not built yet"
        if not healthy:
            return FAILED, "the node's agent reports the new network unhealthy"
        return VERIFIED, ""
