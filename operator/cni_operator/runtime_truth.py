"""The runtime's own verdict next to ours: which runtime judges this node, and
whether it agrees with the model.

The model (`runtime_order`) predicts what containerd and CRI-O make of net.d.
The runtime itself says whether its pod network is ready: CRI `Status`
(NetworkReady) over its socket, and kubelet's Ready condition on the Node
("container runtime network not ready: NetworkReady=false ..."). When they
disagree, the runtime is right and the model is wrong; the report says so,
so an unknown runtime rule can never leave a broken node reported healthy.

Pure: facts in (what the CRI socket and the Node said), a judgement out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni_operator.problems import ERROR, WARNING, Problem
from cni_operator.runtime_order import RuntimeRules, rules_for

RUNTIMES = ("containerd", "crio")
# CRI `Version` runtime_name -> the model's runtime (the keys of status.runtimes).
_KINDS = {"containerd": "containerd", "cri-o": "crio", "crio": "crio"}
# What kubelet's Ready message says when the runtime's network is not ready
# (kubelet: "container runtime network not ready: NetworkReady=false
# reason:NetworkPluginNotReady message:Network plugin returns error: ...").
_NETWORK_MARKERS = ("NetworkReady=false", "NetworkPluginNotReady", "network not ready")
# "1.6.20~ds1" (Debian), "v2.4.2", "1.34.0": the numbers the rule sets are chosen by.
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")


def runtime_kind(runtime_name: str) -> str | None:
    """The model's name for a runtime CRI names, or None for one it has no rules for."""
    return _KINDS.get(runtime_name.strip().lower())


def runtime_version(text: str) -> tuple[int, ...] | None:
    """The version CRI reports, as numbers (None: unparsable, judged by the newest rules)."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


@dataclass(frozen=True)
class RuntimeFacts:
    """What the node's runtime and kubelet said, as last asked.

    `endpoint`: the socket that answered (as the node names it) or None.
    `network_ready`: CRI Status's NetworkReady, None when Status could not be asked.
    `kubelet_ready`: the Node's Ready condition (None: not seen yet, or Unknown).
    `settling`: net.d or the bin dir changed so recently that the runtime may not
    have reloaded them yet (it does within ms to a second): its word waits.
    """

    endpoint: str | None = None
    name: str = ""
    version: str = ""
    api_version: str = ""
    identify_error: str = ""
    network_ready: bool | None = None
    network_reason: str = ""
    network_message: str = ""
    status_error: str = ""
    kubelet_ready: bool | None = None
    kubelet_reason: str = ""
    kubelet_message: str = ""
    settling: bool = False

    @property
    def kind(self) -> str | None:
        return runtime_kind(self.name) if self.name else None

    @property
    def rules(self) -> tuple[RuntimeRules, ...] | None:
        """The model's rules for this runtime and version (None: every rule set)."""
        kind = self.kind
        return None if kind is None else (rules_for(kind, runtime_version(self.version)),)

    @property
    def judged_by(self) -> tuple[str, ...]:
        """The rule sets this node is judged by: its runtime's, or every one."""
        kind = self.kind
        return (kind,) if kind is not None else RUNTIMES

    @property
    def kubelet_network_down(self) -> bool:
        """kubelet reports the node NotReady because the runtime's network is not ready."""
        return self.kubelet_ready is False and any(
            marker in self.kubelet_message for marker in _NETWORK_MARKERS
        )


def kubelet_ready_condition(node: Mapping[str, Any] | None) -> tuple[bool | None, str, str]:
    """(ready, reason, message) of a Node object's Ready condition."""
    for condition in ((node or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            status = condition.get("status")
            ready = True if status == "True" else False if status == "False" else None
            return ready, str(condition.get("reason") or ""), str(condition.get("message") or "")
    return None, "", ""


@dataclass(frozen=True)
class Judgement:
    runtime: dict[str, Any]
    verdict: dict[str, Any]
    problems: list[Problem]
    healthy: bool

    def split(self) -> tuple[list[Problem], list[Problem]]:
        """(errors, to list before every other problem; warnings, to list after)."""
        errors = [p for p in self.problems if p.severity == ERROR]
        return errors, [p for p in self.problems if p.severity != ERROR]


def _describe(facts: RuntimeFacts) -> str:
    if facts.kind is None:
        if facts.name:
            return f"{facts.name} {facts.version} (no rules for it: judged by every rule set)"
        return "unidentified (judged by every rule set)"
    return f"{facts.name} {facts.version}".strip()


def rule_set_names(facts: RuntimeFacts) -> list[str]:
    """The model's rule sets this node is judged by, e.g. ["containerd >= 2.0"]."""
    rules = facts.rules
    return sorted({r.rule_set.name for r in rules}) if rules else []


def _model_summary(views: Mapping[str, Mapping[str, Any]], judged: Sequence[str]) -> str:
    parts = []
    for runtime in judged:
        view = views.get(runtime) or {}
        used = view.get("file") or "no file"
        state = "healthy" if view.get("healthy") else "broken"
        parts.append(f"{runtime}: {used}, {state}")
    return "; ".join(parts)


def judge(
    views: Mapping[str, Mapping[str, Any]],
    facts: RuntimeFacts,
    *,
    conf_dir: str = "/etc/cni/net.d",
) -> Judgement:
    """Compare the model's views (status.runtimes: runtime -> {file, healthy, message})
    for the node's runtime with what the runtime and kubelet report."""
    judged = facts.judged_by
    model_healthy = all(bool((views.get(r) or {}).get("healthy")) for r in judged)
    # What the model says the runtime's CRI Status reports (a view without the
    # field: its health). A missing binary fails pods while NetworkReady stays true.
    predicted_ready = all(_predicted_ready(views.get(r) or {}) for r in judged)
    problems: list[Problem] = []
    runtime: dict[str, Any] = {
        "name": facts.name or "unknown",
        "version": facts.version,
        "apiVersion": facts.api_version,
        "endpoint": facts.endpoint or "",
        "identified": facts.kind is not None,
        "judgedBy": list(judged),
        "ruleSets": rule_set_names(facts),
        "summary": _describe(facts),
    }
    if facts.kind is None:
        why = (
            f"CRI names it {facts.name!r}, which the model has no rules for"
            if facts.name
            else facts.identify_error or "no runtime socket answered"
        )
        runtime["error"] = why
        problems.append(
            Problem(
                "RuntimeUnidentified",
                WARNING,
                f"the node's container runtime could not be identified ({why}); judged by "
                f"every rule set ({', '.join(judged)}): healthy only if all agree",
                "Start the agent with --runtime-endpoint naming the runtime's CRI socket "
                "(as the node sees it), and mount it into the agent's pod.",
            )
        )
    cri: dict[str, Any] = {}
    if facts.network_ready is not None:
        cri = {
            "networkReady": facts.network_ready,
            "reason": facts.network_reason,
            "message": facts.network_message,
        }
    elif facts.status_error:
        cri = {"error": facts.status_error}
    kubelet: dict[str, Any] = {}
    if facts.kubelet_ready is not None:
        kubelet = {
            "ready": facts.kubelet_ready,
            "reason": facts.kubelet_reason,
            "message": facts.kubelet_message,
        }
    # The runtime's word: CRI Status when it answered; kubelet's Ready condition
    # only when it did not (kubelet takes it from the same Status, up to ~10 s
    # later, so next to a fresh Status it is only stale). Not while settling.
    if facts.settling:
        runtime_down = runtime_up = False
    elif facts.network_ready is not None:
        runtime_down, runtime_up = not facts.network_ready, facts.network_ready
    else:
        runtime_down, runtime_up = facts.kubelet_network_down, False
    model = _model_summary(views, judged)
    if runtime_down and predicted_ready:
        if facts.network_ready is False:
            said = f"{facts.network_reason or 'NetworkReady=false'}: {facts.network_message}"
            source = "CRI Status"
        else:
            said = facts.kubelet_message
            source = "kubelet's Ready condition"
        problems.append(
            Problem(
                "RuntimeDisagrees",
                ERROR,
                f"runtime reports {said} ({source}); our model predicted healthy ({model})",
                f"Trust the runtime: this node cannot start pods. Look for what the model "
                f"missed in {conf_dir} (`ls -la {conf_dir}`: dot-files too) and in the "
                "runtime's log, fix or move that file, and report the layout to cniwarden.",
                conf_dir,
            )
        )
    elif runtime_up and not predicted_ready:
        problems.append(
            Problem(
                "RuntimeDisagrees",
                WARNING,
                f"runtime reports NetworkReady=true (CRI Status); our model predicted "
                f"NetworkReady=false ({model})",
                "The runtime may still hold an older config it loaded; restart it only after "
                "fixing the files the problems name, or report the layout to cniwarden.",
                conf_dir,
            )
        )
    agrees = not any(p.code == "RuntimeDisagrees" for p in problems)
    verdict = {
        "cri": cri,
        "kubelet": kubelet,
        "modelHealthy": model_healthy,
        "modelNetworkReady": predicted_ready,
        "agrees": agrees,
        "settling": facts.settling,
    }
    return Judgement(runtime, verdict, problems, model_healthy and not runtime_down)


def _predicted_ready(view: Mapping[str, Any]) -> bool:
    ready = view.get("networkReady")
    return bool(view.get("healthy")) if ready is None else bool(ready)


def apply_judgement(status: Mapping[str, Any], facts: RuntimeFacts) -> dict[str, Any]:
    """A CNINodeState status with the runtime's verdict folded in: `runtime`,
    `runtimeVerdict`, the problems of the judgement first, and `healthy` false
    whenever the runtime says its network is down."""
    conf_dir = "/etc/cni/net.d"
    judgement = judge(status.get("runtimes") or {}, facts, conf_dir=conf_dir)
    out = dict(status)
    first, last = judgement.split()
    ours = [p for p in status.get("problems") or [] if p.get("code") not in _JUDGEMENT_CODES]
    out["problems"] = [p.to_dict() for p in first] + ours + [p.to_dict() for p in last]
    out["problemCount"] = len(out["problems"])
    out["runtime"] = judgement.runtime
    out["runtimeVerdict"] = judgement.verdict
    out["healthy"] = judgement.healthy
    return out


_JUDGEMENT_CODES = frozenset({"RuntimeDisagrees", "RuntimeUnidentified"})
