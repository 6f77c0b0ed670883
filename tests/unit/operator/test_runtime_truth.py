"""The cross-check of the model's verdict with the runtime's own (pure logic)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cni_operator.runtime_truth import (
    RuntimeFacts,
    apply_judgement,
    judge,
    kubelet_ready_condition,
    runtime_kind,
    runtime_version,
)

HEALTHY: dict[str, Any] = {
    "file": "10-pods.conflist",
    "network": "pods",
    "healthy": True,
    "message": "in use",
}
BROKEN: dict[str, Any] = {
    "file": None,
    "network": None,
    "healthy": False,
    "message": "no CNI config",
}
CONTAINERD = RuntimeFacts(
    endpoint="/run/containerd/containerd.sock",
    name="containerd",
    version="1.6.20~ds1",
    api_version="v1",
)
NOT_INITIALIZED = "Network plugin returns error: cni plugin not initialized"
KUBELET_MESSAGE = (
    "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady "
    f"message:{NOT_INITIALIZED}"
)


def codes(judgement: Any) -> list[str]:
    return [p.code for p in judgement.problems]


def test_runtime_names_map_to_rule_sets() -> None:
    assert runtime_kind("containerd") == "containerd"
    assert runtime_kind("cri-o") == "crio"
    assert runtime_kind("Some-Future-Runtime") is None
    assert CONTAINERD.judged_by == ("containerd",)
    assert RuntimeFacts(name="cri-o").judged_by == ("crio",)
    assert RuntimeFacts().judged_by == ("containerd", "crio")
    assert RuntimeFacts(name="kata").judged_by == ("containerd", "crio")


def test_the_issue_scenario_cri_status_says_down_model_says_healthy() -> None:
    facts = replace(
        CONTAINERD,
        network_ready=False,
        network_reason="NetworkPluginNotReady",
        network_message=NOT_INITIALIZED,
    )
    judgement = judge({"containerd": HEALTHY, "crio": HEALTHY}, facts)
    assert codes(judgement) == ["RuntimeDisagrees"]
    problem = judgement.problems[0]
    assert problem.severity == "error"
    assert problem.message.startswith(
        f"runtime reports NetworkPluginNotReady: {NOT_INITIALIZED} (CRI Status); "
        "our model predicted healthy (containerd: 10-pods.conflist, healthy)"
    )
    assert judgement.healthy is False
    assert judgement.verdict["agrees"] is False
    assert judgement.runtime["summary"] == "containerd 1.6.20~ds1"
    assert judgement.runtime["judgedBy"] == ["containerd"]


def test_kubelet_alone_is_enough_when_the_socket_cannot_be_asked() -> None:
    facts = RuntimeFacts(
        identify_error="no CRI socket answered",
        kubelet_ready=False,
        kubelet_reason="KubeletNotReady",
        kubelet_message=KUBELET_MESSAGE,
    )
    judgement = judge({"containerd": HEALTHY, "crio": HEALTHY}, facts)
    assert codes(judgement) == ["RuntimeUnidentified", "RuntimeDisagrees"]
    disagrees = judgement.problems[1]
    assert "(kubelet's Ready condition)" in disagrees.message
    assert judgement.healthy is False


def test_kubelet_not_ready_for_another_reason_is_not_a_network_verdict() -> None:
    facts = RuntimeFacts(
        name="containerd",
        network_ready=True,
        kubelet_ready=False,
        kubelet_message="PLEG is not healthy: pleg was last seen active 3m0s ago",
    )
    judgement = judge({"containerd": HEALTHY}, facts)
    assert codes(judgement) == []
    assert judgement.healthy is True


def test_agreement_either_way_is_no_problem() -> None:
    up = judge({"containerd": HEALTHY}, RuntimeFacts(name="containerd", network_ready=True))
    assert (codes(up), up.healthy, up.verdict["agrees"]) == ([], True, True)
    down = judge({"containerd": BROKEN}, RuntimeFacts(name="containerd", network_ready=False))
    assert (codes(down), down.healthy, down.verdict["agrees"]) == ([], False, True)


def test_runtime_up_while_the_model_says_broken_is_a_warning() -> None:
    judgement = judge({"crio": BROKEN}, RuntimeFacts(name="cri-o", network_ready=True))
    assert codes(judgement) == ["RuntimeDisagrees"]
    assert judgement.problems[0].severity == "warning"
    assert "our model predicted NetworkReady=false (crio: no file, broken)" in (
        judgement.problems[0].message
    )


def test_judged_by_the_runtime_s_rules_only() -> None:
    """A CRI-O node is not broken because containerd would fail on its files."""
    views = {"containerd": BROKEN, "crio": HEALTHY}
    assert judge(views, RuntimeFacts(name="cri-o", network_ready=True)).healthy is True
    assert judge(views, RuntimeFacts(name="containerd", network_ready=True)).healthy is False
    unknown = judge(views, RuntimeFacts(identify_error="no CRI socket answered"))
    assert unknown.healthy is False
    assert unknown.runtime["summary"] == "unidentified (judged by every rule set)"
    assert "judged by every rule set (containerd, crio)" in unknown.problems[0].message


def test_apply_judgement_puts_errors_first_and_replaces_the_last_judgement() -> None:
    status = {
        "runtimes": {"containerd": HEALTHY, "crio": HEALTHY},
        "problems": [
            {"code": "ManagedFileModified", "severity": "warning"},
            {"code": "RuntimeDisagrees", "severity": "error", "message": "stale"},
        ],
        "healthy": True,
    }
    facts = RuntimeFacts(name="containerd", network_ready=False, network_message="x")
    out = apply_judgement(status, facts)
    assert [p["code"] for p in out["problems"]] == ["RuntimeDisagrees", "ManagedFileModified"]
    assert out["problems"][0]["message"] != "stale"
    assert out["problemCount"] == 2
    assert out["healthy"] is False
    assert out["runtime"]["name"] == "containerd"
    assert out["runtimeVerdict"]["cri"] == {"networkReady": False, "reason": "", "message": "x"}
    again = apply_judgement(out, RuntimeFacts(name="containerd", network_ready=True))
    assert [p["code"] for p in again["problems"]] == ["ManagedFileModified"]
    assert again["healthy"] is True


def test_kubelet_ready_condition_of_a_node_object() -> None:
    node = {
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KubeletNotReady",
                    "message": KUBELET_MESSAGE,
                },
            ]
        }
    }
    assert kubelet_ready_condition(node) == (False, "KubeletNotReady", KUBELET_MESSAGE)
    assert kubelet_ready_condition(None) == (None, "", "")
    unknown = {"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert kubelet_ready_condition(unknown) == (None, "", "")


def test_versions_as_cri_reports_them_pick_the_rule_set() -> None:
    assert runtime_version("1.6.20~ds1") == (1, 6, 20)
    assert runtime_version("v2.4.2") == (2, 4, 2)
    assert runtime_version("1.34.0") == (1, 34, 0)
    assert runtime_version("devel") is None
    (rules,) = RuntimeFacts(name="containerd", version="v2.4.2").rules or ()
    assert (rules.kind, rules.version) == ("containerd", (2, 4, 2))
    (crio_rules,) = RuntimeFacts(name="cri-o", version="1.34.0").rules or ()
    assert crio_rules.kind == "crio"
    assert RuntimeFacts(name="kata").rules is None
    judged = judge({"containerd": HEALTHY}, RuntimeFacts(name="containerd", version="2.4.2"))
    assert judged.runtime["ruleSets"] == [rules.rule_set.name]


def test_pods_failing_while_the_network_is_ready_is_no_disagreement() -> None:
    """A missing binary: the model says pods fail but NetworkReady stays true, as
    the runtime says; the node is unhealthy and nobody disagrees."""
    missing = {**BROKEN, "file": "10-pods.conflist", "networkReady": True}
    judgement = judge({"containerd": missing}, RuntimeFacts(name="containerd", network_ready=True))
    assert codes(judgement) == []
    assert judgement.healthy is False
    assert judgement.verdict["modelNetworkReady"] is True


def test_kubelet_lagging_behind_a_fresh_cri_status_is_no_disagreement() -> None:
    """kubelet copies the same Status up to ~10 s later: next to CRI's answer it is stale."""
    facts = RuntimeFacts(
        name="cri-o",
        network_ready=True,
        kubelet_ready=False,
        kubelet_message=KUBELET_MESSAGE,
    )
    judgement = judge({"crio": HEALTHY}, facts)
    assert codes(judgement) == []
    assert judgement.healthy is True
    assert judgement.verdict["kubelet"]["ready"] is False  # still shown as it is


def test_a_runtime_still_reloading_a_changed_directory_is_not_believed_yet() -> None:
    facts = RuntimeFacts(name="containerd", network_ready=False, settling=True)
    judgement = judge({"containerd": HEALTHY}, facts)
    assert codes(judgement) == []
    assert judgement.healthy is True
    assert judgement.verdict["settling"] is True
    settled = judge({"containerd": HEALTHY}, replace(facts, settling=False))
    assert codes(settled) == ["RuntimeDisagrees"]
