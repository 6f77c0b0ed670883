"""The CNIMigration step machine (cni_operator.migration.steps): the forward path,
rollback on failure, restarts at any point, and the spec-field commands."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import (
    TERMINAL,
    Action,
    Halt,
    NodeFacts,
    NodeRecord,
    Step,
    StepError,
    TimelineEntry,
    advance,
    apply_commands,
    begin_rollback,
    build_status,
    decide,
    fail,
    halt_for,
    mark_done,
    plan_work,
    start,
    step_age,
    summarize,
    vanish,
)
from hypothesis import given, settings
from hypothesis import strategies as st

NEW = "cniwarden-net"
OLD = "bridge-net"
T = "2026-12-05T12:00:00Z"


def spec(**fields: Any) -> MigrationSpec:
    body: dict[str, Any] = {"from": {"networkName": OLD}, "to": {"cniNetwork": NEW}}
    body.update(fields)
    return MigrationSpec.model_validate(body)


@dataclass
class World:
    """A node as the API and its agent show it."""

    unschedulable: bool = False
    pods: int = 3
    labelled: bool = False
    effective: str = OLD
    label_sets: int = 0  # how often the switch label went from absent to present
    redundant_switches: int = 0  # switch actions on a node already on the new network

    def facts(self) -> NodeFacts:
        return NodeFacts(self.unschedulable, self.pods, self.effective, self.labelled)

    def act(self, action: Action) -> None:
        if action in (Action.CORDON,):
            self.unschedulable = True
        elif action is Action.EVICT:
            self.pods = 0
        elif action is Action.SWITCH:
            if self.labelled and self.effective == NEW:
                self.redundant_switches += 1
            if not self.labelled:
                self.label_sets += 1
            self.labelled = True
        elif action is Action.UNCORDON:
            self.unschedulable = False
        elif action is Action.RESTORE:
            self.labelled = False

    def agent_pass(self) -> None:
        """The agent writes the new file for a labelled node, and restores the old one
        (removing the new) for an unlabelled one."""
        self.effective = NEW if self.labelled else OLD


def drive(
    world: World,
    record: NodeRecord,
    *,
    crashes: list[bool],
    agent_lags: list[bool],
    verify_ok: bool = True,
    limit: int = 200,
) -> NodeRecord:
    """A controller that acts, then re-observes, and advances only on what it sees.
    `crashes[i]`: the controller dies after pass i's action, before storing the new
    record (it restarts from the stored one). `agent_lags[i]`: the agent has not run
    yet in pass i."""
    stored = record
    for i in range(limit):
        if stored.step in TERMINAL:
            return stored
        if not (agent_lags[i % len(agent_lags)] if agent_lags else False):
            world.agent_pass()
        action = decide(stored, world.facts(), NEW)
        world.act(action)
        if crashes and crashes[i % len(crashes)]:
            continue  # the new record is lost; the stored one decides after the restart
        if action is Action.ADVANCE:
            stored = advance(stored, T, already_done=True)
        elif action is Action.VERIFY:
            stored = advance(stored, T) if verify_ok else fail(stored, "probe failed", T)
    raise AssertionError(f"no terminal step after {limit} passes: {stored.step}")


def test_the_forward_path_in_order() -> None:
    record = NodeRecord("n1", 0)
    world = World()
    record = start(record, world.facts(), T)
    seen = [record.step]
    while record.step not in TERMINAL:
        world.agent_pass()
        action = decide(record, world.facts(), NEW)
        world.act(action)
        if action in (Action.ADVANCE, Action.VERIFY):
            record = advance(record, T)
            seen.append(record.step)
    assert seen == [Step.CORDON, Step.EVICT, Step.SWITCH, Step.VERIFY, Step.UNCORDON, Step.DONE]
    assert world == World(unschedulable=False, pods=0, labelled=True, effective=NEW, label_sets=1)
    assert [e.step for e in record.timeline] == seen[:-1]
    assert all(e.finished_at == T for e in record.timeline)


@settings(max_examples=300, deadline=None)
@given(
    crashes=st.lists(st.booleans(), min_size=1, max_size=12),
    agent_lags=st.lists(st.booleans(), min_size=1, max_size=12),
    cordoned_before=st.booleans(),
)
def test_restarts_anywhere_never_switch_twice(
    crashes: list[bool], agent_lags: list[bool], cordoned_before: bool
) -> None:
    # A restart can only lose progress, so at least one pass in each cycle must persist.
    if all(crashes) or all(agent_lags):
        crashes, agent_lags = [*crashes, False], [*agent_lags, False]
    world = World(unschedulable=cordoned_before)
    record = start(NodeRecord("n1", 0), world.facts(), T)
    final = drive(world, record, crashes=crashes, agent_lags=agent_lags)
    assert final.step is Step.DONE
    assert world.label_sets == 1
    assert world.redundant_switches == 0
    assert world.effective == NEW
    # A node cordoned before the migration stays cordoned; any other is uncordoned.
    assert world.unschedulable is cordoned_before


@pytest.mark.parametrize(
    ("failing", "then"),
    [
        (Step.CORDON, Step.ROLLBACK_UNCORDON),
        (Step.EVICT, Step.ROLLBACK_UNCORDON),
        (Step.SWITCH, Step.RESTORE),
        (Step.VERIFY, Step.RESTORE),
        (Step.UNCORDON, Step.RESTORE),
    ],
)
def test_a_failure_rolls_back_from_where_it_is(failing: Step, then: Step) -> None:
    record = replace(NodeRecord("n1", 0), step=failing, timeline=(TimelineEntry(failing, T),))
    failed = fail(record, "drain timed out", "2026-12-05T12:01:00Z")
    assert failed.step is then
    closed, opened = failed.timeline
    assert (closed.step, closed.result, closed.message) == (failing, "Failed", "drain timed out")
    assert closed.finished_at == "2026-12-05T12:01:00Z"
    assert (opened.step, opened.finished_at) == (then, None)


@settings(max_examples=200, deadline=None)
@given(
    crashes=st.lists(st.booleans(), min_size=1, max_size=8),
    agent_lags=st.lists(st.booleans(), min_size=1, max_size=8),
)
def test_a_failed_verify_restores_the_old_network_and_uncordons(
    crashes: list[bool], agent_lags: list[bool]
) -> None:
    if all(crashes) or all(agent_lags):
        crashes, agent_lags = [*crashes, False], [*agent_lags, False]
    world = World()
    record = start(NodeRecord("n1", 0), world.facts(), T)
    final = drive(world, record, crashes=crashes, agent_lags=agent_lags, verify_ok=False)
    assert final.step is Step.ROLLED_BACK
    assert world.labelled is False and world.effective == OLD
    assert world.unschedulable is False
    failed = [e for e in final.timeline if e.result == "Failed"]
    assert [(e.step, e.message) for e in failed] == [(Step.VERIFY, "probe failed")]


def test_a_failing_rollback_step_stays_and_is_retried() -> None:
    record = replace(NodeRecord("n1", 0), step=Step.RESTORE, timeline=())
    again = fail(record, "agent did not restore within 60 s", T)
    assert again.step is Step.RESTORE
    assert again.timeline[-1].finished_at is None  # a fresh attempt of the same step


def test_transitions_the_machine_does_not_allow() -> None:
    with pytest.raises(StepError, match="cannot start from step Cordon"):
        start(replace(NodeRecord("n1", 0), step=Step.CORDON), World().facts(), T)
    with pytest.raises(StepError, match="no step follows Done"):
        advance(replace(NodeRecord("n1", 0), step=Step.DONE), T)
    with pytest.raises(StepError, match="cannot fail"):
        fail(NodeRecord("n1", 0), "x", T)
    with pytest.raises(StepError, match="only a Done node is rolled back"):
        begin_rollback(NodeRecord("n1", 0), T)


def test_a_requested_rollback_drains_the_migrated_node_first() -> None:
    world = World(unschedulable=False, pods=2, labelled=True, effective=NEW)
    record = begin_rollback(replace(NodeRecord("n1", 0), step=Step.DONE), T)
    final = drive(world, record, crashes=[False], agent_lags=[False])
    assert final.step is Step.ROLLED_BACK
    assert [e.step for e in final.timeline] == [
        Step.ROLLBACK_CORDON,
        Step.ROLLBACK_EVICT,
        Step.RESTORE,
        Step.ROLLBACK_UNCORDON,
    ]
    assert world == World(unschedulable=False, pods=0, labelled=False, effective=OLD, label_sets=0)


def test_records_survive_the_status_round_trip() -> None:
    world = World(unschedulable=True)
    record = start(NodeRecord("n1", 2), world.facts(), T)
    record = mark_done(replace(advance(record, T, message="cordoned"), step=Step.DONE), 4)
    assert NodeRecord.from_status(record.to_status()) == record
    halt = Halt("n1", Step.VERIFY, "probe failed", 3)
    assert Halt.from_status(halt.to_status()) == halt
    assert Halt.from_status(None) is None


# --- the migration as a whole ------------------------------------------------------


def records(*steps: tuple[str, int, Step]) -> list[NodeRecord]:
    return [replace(NodeRecord(name, wave), step=step) for name, wave, step in steps]


def test_waves_run_one_after_another_within_max_unavailable() -> None:
    nodes = records(
        ("a", 0, Step.DONE), ("b", 0, Step.EVICT), ("c", 0, Step.PENDING), ("d", 1, Step.PENDING)
    )
    work = plan_work(spec(waves={"maxUnavailable": 2}), nodes, None)
    assert (work.phase, work.continue_nodes, work.start_nodes) == ("Running", ("b",), ("c",))
    work = plan_work(spec(waves={"maxUnavailable": 1}), nodes, None)
    assert work.start_nodes == ()
    # Wave 1 starts only when wave 0 is finished.
    done0 = records(("a", 0, Step.DONE), ("c", 0, Step.SKIPPED), ("d", 1, Step.PENDING))
    assert plan_work(spec(), done0, None).start_nodes == ("d",)
    assert plan_work(spec(), records(("a", 0, Step.DONE)), None).phase == "Succeeded"


def test_pause_and_halt_start_nothing_but_let_a_node_in_progress_finish() -> None:
    nodes = records(("a", 0, Step.VERIFY), ("b", 0, Step.PENDING))
    paused = plan_work(spec(pause=True, waves={"maxUnavailable": 5}), nodes, None)
    assert (paused.phase, paused.continue_nodes, paused.start_nodes) == ("Paused", ("a",), ())
    halt = Halt("a", Step.VERIFY, "probe failed", 0)
    halted = plan_work(spec(), nodes, halt)
    assert (halted.phase, halted.continue_nodes, halted.start_nodes) == ("Halted", ("a",), ())


def test_resume_retries_the_halted_node() -> None:
    nodes = records(("a", 0, Step.ROLLED_BACK), ("b", 0, Step.PENDING))
    halt = halt_for(nodes[0], Step.VERIFY, "probe failed", spec(resume=2))
    assert halt == Halt("a", Step.VERIFY, "probe failed", 2)
    same = apply_commands(spec(resume=2), nodes, halt)
    assert same.halt == halt and same.notes == ()
    resumed = apply_commands(spec(resume=3), nodes, halt)
    assert resumed.halt is None
    assert plan_work(spec(resume=3), resumed.records, None).start_nodes == ("a",)
    # Applying the same spec again changes nothing.
    assert apply_commands(spec(resume=3), resumed.records, None).records == resumed.records


def test_skipping_the_halted_node_goes_on_with_the_next() -> None:
    nodes = records(("a", 0, Step.ROLLED_BACK), ("b", 0, Step.PENDING), ("c", 0, Step.DONE))
    halt = Halt("a", Step.SWITCH, "switch refused", 0)
    out = apply_commands(spec(skipNodes=["a"]), nodes, halt)
    assert out.halt is None
    assert [r.step for r in out.records] == [Step.SKIPPED, Step.PENDING, Step.DONE]
    assert plan_work(spec(skipNodes=["a"]), out.records, None).start_nodes == ("b",)
    # A node in progress is not skipped: it must finish or roll back first.
    busy = apply_commands(spec(skipNodes=["b"]), records(("b", 0, Step.EVICT)), None)
    assert busy.records[0].step is Step.EVICT


def test_rollback_of_every_node_starts_with_the_last_migrated() -> None:
    nodes = [
        mark_done(replace(NodeRecord("a", 0), step=Step.DONE), 1),
        mark_done(replace(NodeRecord("b", 0), step=Step.DONE), 2),
        NodeRecord("c", 1),
    ]
    halt = Halt("c", Step.VERIFY, "probe failed", 0)
    out = apply_commands(spec(rollback=True), nodes, halt)
    assert out.halt is None
    work = plan_work(spec(rollback=True), out.records, None)
    assert (work.phase, work.rollback_nodes) == ("RollingBack", ("b",))
    rolling = [nodes[0], begin_rollback(nodes[1], T), nodes[2]]
    work = plan_work(spec(rollback=True), rolling, None)
    assert (work.continue_nodes, work.rollback_nodes) == (("b",), ())
    rolled = [replace(r, step=Step.ROLLED_BACK) if r.name != "c" else r for r in nodes]
    assert plan_work(spec(rollback=True), rolled, None).phase == "RolledBack"


def test_summary_for_the_printer_columns() -> None:
    nodes = records(
        ("a", 0, Step.DONE), ("b", 0, Step.EVICT), ("c", 0, Step.SKIPPED), ("d", 1, Step.PENDING)
    )
    summary = summarize(nodes)
    assert (summary.progress, summary.current_node, summary.current_step) == ("1/3", "b", "Evict")


def test_step_age_counts_from_the_recorded_steps_start() -> None:
    record = start(NodeRecord("n1", 0), World().facts(), "2026-12-05T12:00:00Z")
    at = 1_796_472_000.0  # 2026-12-05T12:00:00Z
    assert step_age(record, at + 42) == 42
    assert step_age(NodeRecord("n1", 0), at) is None
    stale = replace(record, step=Step.EVICT)  # the timeline's last entry is Cordon
    assert step_age(stale, at) is None


def test_status_names_the_halt_and_keeps_transition_times() -> None:
    nodes = records(("a", 0, Step.DONE), ("b", 0, Step.RESTORE))
    halt = Halt("b", Step.VERIFY, "probe failed", 0)
    status = build_status(nodes, halt, "Halted", generation=3, now=T)
    assert status["phase"] == "Halted" and status["progress"] == "1/2"
    assert (status["currentNode"], status["currentStep"]) == ("b", "RestoreOld")
    halted = next(c for c in status["conditions"] if c["type"] == "Halted")
    assert halted["status"] == "True"
    assert halted["message"] == "node b, step Verify: probe failed"
    later = build_status(
        nodes,
        halt,
        "Halted",
        generation=3,
        now="2026-12-05T13:00:00Z",
        old_conditions=status["conditions"],
    )
    assert next(c for c in later["conditions"] if c["type"] == "Halted")["lastTransitionTime"] == T
    done = build_status(
        records(("a", 0, Step.DONE)),
        None,
        "Succeeded",
        generation=3,
        now="2026-12-05T13:00:00Z",
        old_conditions=status["conditions"],
    )
    by_type = {c["type"]: c for c in done["conditions"]}
    assert by_type["Halted"]["status"] == "False"
    assert by_type["Halted"]["lastTransitionTime"] == "2026-12-05T13:00:00Z"
    assert by_type["Complete"]["status"] == "True" and done["halt"] is None


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.sampled_from(list(Step)), min_size=1, max_size=12),
    waves_of=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    max_unavailable=st.integers(1, 4),
    paused=st.booleans(),
    halted=st.booleans(),
)
def test_the_plan_never_exceeds_its_limits(
    steps: list[Step], waves_of: list[int], max_unavailable: int, paused: bool, halted: bool
) -> None:
    nodes = [replace(NodeRecord(f"n{i}", waves_of[i]), step=step) for i, step in enumerate(steps)]
    the_spec = spec(pause=paused, waves={"maxUnavailable": max_unavailable})
    halt = Halt("n0", Step.VERIFY, "x", 0) if halted else None
    work = plan_work(the_spec, nodes, halt)
    active = {r.name for r in nodes if r.in_progress}
    assert set(work.continue_nodes) == active  # a node in progress is never abandoned
    if paused or halted:
        assert work.start_nodes == ()
    assert len(active) + len(work.start_nodes) <= max(max_unavailable, len(active))
    started = [r for r in nodes if r.name in work.start_nodes]
    assert all(r.step in (Step.PENDING, Step.ROLLED_BACK) for r in started)
    unfinished_waves = [
        r.wave for r in nodes if r.step in (Step.PENDING, Step.ROLLED_BACK) or r.in_progress
    ]
    if started:  # only the first unfinished wave starts
        assert {r.wave for r in started} == {min(unfinished_waves)}
    if not unfinished_waves and not halted:
        assert work.phase == "Succeeded"


def test_a_deleted_node_leaves_the_migration() -> None:
    record = replace(NodeRecord("n1", 0), step=Step.EVICT, timeline=(TimelineEntry(Step.EVICT, T),))
    gone = vanish(record, "2026-12-05T12:05:00Z")
    assert gone.step is Step.GONE and not gone.in_progress
    assert (gone.timeline[-1].result, gone.timeline[-1].message) == (
        "Failed",
        "the Node was deleted",
    )
    nodes = [gone, replace(NodeRecord("n2", 0), step=Step.DONE)]
    assert plan_work(spec(), nodes, None).phase == "Succeeded"
    assert summarize(nodes).progress == "1/1"
