"""Status aggregation from per-node reports."""

from typing import Any

from cni_operator.conditions import build_status, same_status


def report(state: str, applied: int, desired: int, **extra: Any) -> dict[str, Any]:
    entry = {
        "name": "net",
        "state": state,
        "appliedGeneration": applied,
        "desiredGeneration": desired,
    }
    entry.update(extra.pop("entry", {}))
    return {"networks": [entry], **extra}


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def build(reports: dict[str, Any], selected: list[str], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "network": "net",
        "generation": 3,
        "selected": selected,
        "reports": reports,
        "spec_error": None,
        "previous_conditions": [],
        "now": "2026-01-01T00:00:00Z",
    }
    args.update(kw)
    return build_status(**args)


def test_all_ready() -> None:
    status = build({"a": report("Applied", 3, 3), "b": report("Applied", 3, 3)}, ["a", "b"])
    c = conds(status)
    assert c["Ready"]["status"] == "True"
    assert c["Shadowed"]["status"] == "False"
    assert c["SwitchBlocked"]["status"] == "False"
    assert c["Degraded"]["status"] == "False"
    assert status["nodesReady"] == 2 and status["nodesSelected"] == 2
    assert all(x["observedGeneration"] == 3 for x in status["conditions"])


def test_old_generation_and_missing_report_are_not_ready() -> None:
    status = build({"a": report("Applied", 2, 3)}, ["a", "b"])
    c = conds(status)
    assert c["Ready"]["status"] == "False"
    assert "waiting for a, b" in c["Ready"]["message"]
    assert (
        c["Degraded"]["status"] == "True" and "no agent report from b" in c["Degraded"]["message"]
    )


def test_shadowed_and_blocked() -> None:
    reports = {
        "a": report("Applied", 3, 3, shadowingFiles=["/etc/cni/net.d/00-x.conflist"]),
        "b": report(
            "Blocked",
            2,
            3,
            entry={"blockedFields": ["plugins[0].ipam.ranges"], "attachments": 4},
        ),
    }
    status = build(reports, ["a", "b"])
    c = conds(status)
    assert c["Shadowed"]["status"] == "True"
    assert "a: /etc/cni/net.d/00-x.conflist" in c["Shadowed"]["message"]
    assert c["SwitchBlocked"]["status"] == "True"
    assert "plugins[0].ipam.ranges" in c["SwitchBlocked"]["message"]
    assert "b (4 attachment(s))" in c["SwitchBlocked"]["message"]
    assert status["blockedNodes"] == ["b"] and status["nodesShadowed"] == 1


def test_transition_time_is_kept_while_status_unchanged() -> None:
    first = build({"a": report("Applied", 3, 3)}, ["a"])
    second = build(
        {"a": report("Applied", 3, 3)}, ["a"], previous_conditions=first["conditions"], now="later"
    )
    assert conds(second)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same_status(first, second)
    third = build(
        {"a": report("Applied", 2, 3)}, ["a"], previous_conditions=second["conditions"], now="later"
    )
    assert conds(third)["Ready"]["lastTransitionTime"] == "later"
    assert not same_status(second, third)


def test_invalid_spec() -> None:
    status = build({}, ["a"], spec_error="spec.priority: too big")
    c = conds(status)
    assert c["Ready"]["reason"] == "InvalidSpec"
    assert c["Degraded"]["status"] == "True"
    assert (c["Degraded"]["reason"], c["Degraded"]["message"]) == (
        "InvalidSpec",
        "spec.priority: too big; no agent report from a",
    )


def test_invalid_render_on_a_node_is_degraded_with_its_cause() -> None:
    refused = report(
        "Invalid", 2, 3, entry={"message": "not written, the last good config stays: too new"}
    )
    status = build({"a": report("Applied", 3, 3), "b": refused}, ["a", "b", "c"])
    degraded = conds(status)["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidConfig")
    assert degraded["message"] == (
        "b: not written, the last good config stays: too new; no agent report from c"
    )
    # A stale refusal (of an older generation) is not this generation's problem.
    old = report("Invalid", 2, 2, entry={"message": "old"})
    assert conds(build({"a": old}, ["a"]))["Degraded"]["reason"] == "AsExpected"
