"""The per-node step machine of a CNIMigration, and the migration-level commands.

A node goes Pending -> Cordon -> Evict -> Switch -> Verify -> Uncordon -> Done.
Any failure rolls it back: RestoreOld (the node loses the switch label, so the
agent removes the new network's file and restores the quarantined old one byte
for byte from its journal) if the switch may have begun, then RollbackUncordon,
then RolledBack; the migration halts with the node, the step and the cause.

The step recorded in status is the step being carried out. After a restart the
controller asks `decide` again with what it observes now (`NodeFacts`): a step
whose effect is already visible is only advanced, never redone. So a node whose
runtime already uses the new network is never switched twice, and a node that was
unschedulable before the migration is left unschedulable afterwards.

Pure: records in, records out; the caller does the API calls and stores status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cni_operator.kube_time import parse_rfc3339
from cni_operator.migration.spec import MigrationSpec


class Step(StrEnum):
    PENDING = "Pending"
    CORDON = "Cordon"
    EVICT = "Evict"
    SWITCH = "Switch"
    VERIFY = "Verify"
    UNCORDON = "Uncordon"
    DONE = "Done"
    ROLLBACK_CORDON = "RollbackCordon"
    ROLLBACK_EVICT = "RollbackEvict"
    RESTORE = "RestoreOld"
    ROLLBACK_UNCORDON = "RollbackUncordon"
    ROLLED_BACK = "RolledBack"
    SKIPPED = "Skipped"
    GONE = "Gone"  # the Node was deleted: nothing left to migrate or roll back


FORWARD: tuple[Step, ...] = (
    Step.CORDON,
    Step.EVICT,
    Step.SWITCH,
    Step.VERIFY,
    Step.UNCORDON,
    Step.DONE,
)
# A migrated node rolled back on request: its pods are on the new network, so it is
# drained again before its old file comes back.
BACKWARD: tuple[Step, ...] = (
    Step.ROLLBACK_CORDON,
    Step.ROLLBACK_EVICT,
    Step.RESTORE,
    Step.ROLLBACK_UNCORDON,
    Step.ROLLED_BACK,
)
TERMINAL = frozenset({Step.PENDING, Step.DONE, Step.ROLLED_BACK, Step.SKIPPED, Step.GONE})
# Steps after which the node's runtime may already use the new network.
SWITCH_MAY_HAVE_BEGUN = frozenset({Step.SWITCH, Step.VERIFY, Step.UNCORDON})


class Action(StrEnum):
    """What the controller does for the recorded step."""

    CORDON = "Cordon"
    EVICT = "Evict"
    SWITCH = "Switch"  # label the node for the new network, acknowledge this node
    VERIFY = "Verify"  # run the probe pod
    UNCORDON = "Uncordon"
    RESTORE = "RestoreOld"  # unlabel the node; wait for the agent to restore the old file
    ADVANCE = "Advance"  # the step's effect is already there: record the next step
    NOTHING = "Nothing"  # a terminal step


@dataclass(frozen=True)
class NodeFacts:
    """What the controller observes about a node right now."""

    unschedulable: bool
    pods_to_evict: int  # pods of the node that the eviction plan still names
    effective_network: str | None  # the network the runtime uses (the node's CNINodeState)
    switch_labelled: bool  # the node carries the switch label for the new network


@dataclass(frozen=True)
class TimelineEntry:
    step: Step
    started_at: str
    finished_at: str | None = None
    result: str = "Running"  # Running, Succeeded, AlreadyDone, Failed
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": str(self.step), "startedAt": self.started_at}
        if self.finished_at is not None:
            out["finishedAt"] = self.finished_at
        out["result"] = self.result
        if self.message:
            out["message"] = self.message
        return out

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> TimelineEntry:
        return cls(
            Step(raw["step"]),
            str(raw["startedAt"]),
            raw.get("finishedAt"),
            str(raw.get("result", "Running")),
            str(raw.get("message", "")),
        )


@dataclass(frozen=True)
class NodeRecord:
    """One node's progress, as stored in `status.nodes[]`."""

    name: str
    wave: int
    step: Step = Step.PENDING
    # Node.spec.unschedulable when we began: such a node is not uncordoned by us.
    was_unschedulable: bool | None = None
    attempt: int = 0
    completed: int | None = None  # order in which nodes reached Done (for rollback)
    timeline: tuple[TimelineEntry, ...] = field(default_factory=tuple)

    @property
    def in_progress(self) -> bool:
        return self.step not in TERMINAL

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "wave": self.wave,
            "step": str(self.step),
            "attempt": self.attempt,
            "timeline": [entry.to_status() for entry in self.timeline],
        }
        if self.was_unschedulable is not None:
            out["wasUnschedulable"] = self.was_unschedulable
        if self.completed is not None:
            out["completed"] = self.completed
        return out

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> NodeRecord:
        return cls(
            name=str(raw["name"]),
            wave=int(raw.get("wave", 0)),
            step=Step(raw.get("step", Step.PENDING)),
            was_unschedulable=raw.get("wasUnschedulable"),
            attempt=int(raw.get("attempt", 0)),
            completed=raw.get("completed"),
            timeline=tuple(TimelineEntry.from_status(e) for e in raw.get("timeline") or []),
        )


class StepError(ValueError):
    """A transition the machine does not allow (a bug in the caller, or a status
    edited by hand); the message names the node and both steps."""


def decide(record: NodeRecord, facts: NodeFacts, to_network: str) -> Action:
    """The action for the recorded step, given what is observed now. Every step
    whose effect is already visible is advanced, not redone: this is what makes a
    restart at any point safe."""
    step = record.step
    if step in TERMINAL:
        return Action.NOTHING
    if step in (Step.CORDON, Step.ROLLBACK_CORDON):
        return Action.ADVANCE if facts.unschedulable else Action.CORDON
    if step in (Step.EVICT, Step.ROLLBACK_EVICT):
        return Action.ADVANCE if facts.pods_to_evict == 0 else Action.EVICT
    if step is Step.SWITCH:
        switched = facts.switch_labelled and facts.effective_network == to_network
        return Action.ADVANCE if switched else Action.SWITCH
    if step is Step.VERIFY:
        return Action.VERIFY
    if step is Step.RESTORE:
        restored = not facts.switch_labelled and facts.effective_network != to_network
        return Action.ADVANCE if restored else Action.RESTORE
    # Uncordon / RollbackUncordon: leave a node cordoned before us as it was.
    if not facts.unschedulable or record.was_unschedulable:
        return Action.ADVANCE
    return Action.UNCORDON


def _close_last(
    timeline: tuple[TimelineEntry, ...], now: str, result: str, message: str
) -> tuple[TimelineEntry, ...]:
    if timeline and timeline[-1].finished_at is None:
        last = replace(timeline[-1], finished_at=now, result=result, message=message)
        return (*timeline[:-1], last)
    return timeline


def _enter(
    record: NodeRecord, step: Step, now: str, *, result: str = "Succeeded", message: str = ""
) -> NodeRecord:
    timeline = _close_last(record.timeline, now, result, message)
    if step not in TERMINAL:
        timeline = (*timeline, TimelineEntry(step, now))
    return replace(record, step=step, timeline=timeline)


def start(record: NodeRecord, facts: NodeFacts, now: str) -> NodeRecord:
    """Begin (or, after a resume, begin again) the forward path of a node."""
    if record.step not in (Step.PENDING, Step.ROLLED_BACK):
        raise StepError(f"node {record.name}: cannot start from step {record.step}")
    begun = replace(record, was_unschedulable=facts.unschedulable, attempt=record.attempt + 1)
    return _enter(begun, Step.CORDON, now)


def advance(
    record: NodeRecord, now: str, *, already_done: bool = False, message: str = ""
) -> NodeRecord:
    """The recorded step succeeded (or was found done): record the next one."""
    result = "AlreadyDone" if already_done else "Succeeded"
    for path in (FORWARD, BACKWARD):
        if record.step in path:
            index = path.index(record.step)
            if index + 1 == len(path):
                break
            return _enter(record, path[index + 1], now, result=result, message=message)
    raise StepError(f"node {record.name}: no step follows {record.step}")


def vanish(record: NodeRecord, now: str) -> NodeRecord:
    """The Node was deleted (at any step): its record ends, the migration goes on."""
    return _enter(record, Step.GONE, now, result="Failed", message="the Node was deleted")


def mark_done(record: NodeRecord, sequence: int) -> NodeRecord:
    """Remember the order nodes finished in: a rollback of all starts with the last."""
    if record.step is not Step.DONE:
        raise StepError(f"node {record.name}: only a Done node gets a completion order")
    return replace(record, completed=sequence)


def fail(record: NodeRecord, cause: str, now: str) -> NodeRecord:
    """The recorded step failed: roll the node back from where it is."""
    step = record.step
    if step in (Step.CORDON, Step.EVICT):
        target = Step.ROLLBACK_UNCORDON  # nothing was switched
    elif step in SWITCH_MAY_HAVE_BEGUN:
        target = Step.RESTORE
    elif step in (Step.ROLLBACK_CORDON, Step.ROLLBACK_EVICT):
        # A requested rollback of a migrated node could not drain it: the node stays
        # on the new network, cordoned or not, and the migration halts here.
        return _enter(record, step, now, result="Failed", message=cause)
    elif step in (Step.RESTORE, Step.ROLLBACK_UNCORDON):
        # The rollback itself failed: stay at this step; a resume retries it.
        return _enter(record, step, now, result="Failed", message=cause)
    else:
        raise StepError(f"node {record.name}: step {step} cannot fail")
    return _enter(record, target, now, result="Failed", message=cause)


def begin_rollback(record: NodeRecord, now: str) -> NodeRecord:
    """Start the requested rollback of a migrated node."""
    if record.step is not Step.DONE:
        raise StepError(f"node {record.name}: only a Done node is rolled back, not {record.step}")
    return _enter(record, Step.ROLLBACK_CORDON, now)


# --- the migration as a whole ------------------------------------------------------


@dataclass(frozen=True)
class Halt:
    """Why the migration stopped on its own (`status.halt`)."""

    node: str
    step: Step
    cause: str
    resume: int  # spec.resume at the time; a higher one resumes

    def to_status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "step": str(self.step),
            "cause": self.cause,
            "resume": self.resume,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> Halt | None:
        if not raw:
            return None
        return cls(str(raw["node"]), Step(raw["step"]), str(raw["cause"]), int(raw["resume"]))

    @property
    def message(self) -> str:
        return f"node {self.node}, step {self.step}: {self.cause}"


def halt_for(record: NodeRecord, failed_step: Step, cause: str, spec: MigrationSpec) -> Halt:
    return Halt(record.name, failed_step, cause, spec.resume)


@dataclass(frozen=True)
class Commands:
    """The records and halt after applying what the spec asks (`kubectl patch`)."""

    records: tuple[NodeRecord, ...]
    halt: Halt | None
    notes: tuple[str, ...] = ()  # what changed, for Events


def apply_commands(
    spec: MigrationSpec, records: Sequence[NodeRecord], halt: Halt | None
) -> Commands:
    """skipNodes, resume and rollback, as the spec says now. Idempotent: applying
    the same spec twice changes nothing the second time."""
    skip = set(spec.skipNodes)
    notes: list[str] = []
    out: list[NodeRecord] = []
    for record in records:
        if record.name in skip and record.step in (Step.PENDING, Step.ROLLED_BACK):
            out.append(replace(record, step=Step.SKIPPED))
            notes.append(f"node {record.name} skipped")
            if halt is not None and halt.node == record.name:
                halt = None
                notes.append(f"halt on node {record.name} cleared by skipping it")
        else:
            out.append(record)
    if spec.rollback and halt is not None and all(not r.in_progress for r in out):
        notes.append(f"halt on node {halt.node} cleared by the rollback of every node")
        halt = None
    if halt is not None and spec.resume > halt.resume:
        notes.append(f"resumed after the halt on node {halt.node}")
        halt = None
    return Commands(tuple(out), halt, tuple(notes))


@dataclass(frozen=True)
class Work:
    """What the controller should do next for the migration as a whole."""

    phase: str
    continue_nodes: tuple[str, ...] = ()  # in progress: run `decide` for them
    start_nodes: tuple[str, ...] = ()  # Pending (or RolledBack after a resume): `start`
    rollback_nodes: tuple[str, ...] = ()  # Done: `begin_rollback`


def plan_work(spec: MigrationSpec, records: Sequence[NodeRecord], halt: Halt | None) -> Work:
    """Which nodes to move now. At most `waves.maxUnavailable` nodes are off their
    normal course at once, a wave starts when the one before is finished, and
    nothing new starts while paused or halted (a node in progress still finishes
    or rolls back, since stopping it midway would leave it cordoned)."""
    active = tuple(r.name for r in records if r.in_progress)
    if spec.rollback:
        if active:
            return Work("RollingBack", continue_nodes=active)
        done = sorted(
            (r for r in records if r.step is Step.DONE),
            key=lambda r: -(r.completed if r.completed is not None else -1),
        )
        if halt is not None:
            return Work("Halted")
        if done:
            return Work("RollingBack", rollback_nodes=(done[0].name,))
        return Work("RolledBack")
    if halt is not None:
        return Work("Halted", continue_nodes=active)
    retry = {r.name for r in records if r.step is Step.ROLLED_BACK}
    unfinished = [r for r in records if r.step is Step.PENDING or r.name in retry or r.in_progress]
    if not unfinished:
        return Work("Succeeded")
    if spec.pause:
        return Work("Paused", continue_nodes=active)
    wave = min(r.wave for r in unfinished)
    room = spec.waves.maxUnavailable - len(active)
    candidates = [
        r.name for r in records if r.wave == wave and (r.step is Step.PENDING or r.name in retry)
    ]
    return Work("Running", continue_nodes=active, start_nodes=tuple(candidates[: max(room, 0)]))


@dataclass(frozen=True)
class Summary:
    nodes_done: int
    nodes_total: int
    current_node: str
    current_step: str

    @property
    def progress(self) -> str:
        return f"{self.nodes_done}/{self.nodes_total}"


def summarize(records: Sequence[NodeRecord]) -> Summary:
    """For the printer columns: skipped and deleted nodes count in neither done nor total."""
    counted = [r for r in records if r.step not in (Step.SKIPPED, Step.GONE)]
    done = sum(1 for r in counted if r.step is Step.DONE)
    current = [r for r in counted if r.in_progress]
    names = ",".join(r.name for r in current)
    steps = ",".join(sorted({str(r.step) for r in current}))
    return Summary(done, len(counted), names, steps)


def step_age(record: NodeRecord, now: float) -> float | None:
    """Seconds the recorded step has run (for the drain timeout); None when its
    start is not known."""
    if not record.timeline or record.timeline[-1].step is not record.step:
        return None
    started = parse_rfc3339(record.timeline[-1].started_at)
    return None if started is None else max(0.0, now - started)


def _condition(
    old: Sequence[Mapping[str, Any]],
    kind: str,
    status: bool,
    *,
    reason: str,
    message: str,
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    before = next((c for c in old if c.get("type") == kind), None)
    since = (
        before["lastTransitionTime"]
        if before is not None and before.get("status") == value and before.get("lastTransitionTime")
        else now
    )
    return {
        "type": kind,
        "status": value,
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    }


def build_status(
    records: Sequence[NodeRecord],
    halt: Halt | None,
    phase: str,
    *,
    generation: int,
    now: str,
    old_conditions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """`CNIMigration.status` from the records. `Halted` names the node, the step and
    the cause; `Complete` is True once every node is Done (or all rolled back)."""
    summary = summarize(records)
    halted = _condition(
        old_conditions,
        "Halted",
        halt is not None,
        reason="StepFailed" if halt is not None else "NotHalted",
        message=halt.message if halt is not None else "",
        now=now,
    )
    complete = _condition(
        old_conditions,
        "Complete",
        phase in ("Succeeded", "RolledBack"),
        reason=phase,
        message=f"{summary.progress} nodes done",
        now=now,
    )
    return {
        "observedGeneration": generation,
        "phase": phase,
        "progress": summary.progress,
        "nodesDone": summary.nodes_done,
        "nodesTotal": summary.nodes_total,
        "currentNode": summary.current_node,
        "currentStep": summary.current_step,
        "halt": halt.to_status() if halt is not None else None,
        "nodes": [r.to_status() for r in records],
        "conditions": [halted, complete],
    }
