"""CNINetwork status from the per-node reports: conditions and counts.

Pure: the controller feeds it the network, the selected node names and the
`status` of each node's CNINodeState; it returns the new `status` dict.
Conditions follow metav1.Condition and keep lastTransitionTime while unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni_operator.pools import DEFAULT_PRESSURE_THRESHOLD, fullest

READY = "Ready"
SHADOWED = "Shadowed"
SWITCH_BLOCKED = "SwitchBlocked"
DEGRADED = "Degraded"
IP_POOL_PRESSURE = "IPPoolPressure"
CONDITION_TYPES = (READY, SHADOWED, SWITCH_BLOCKED, DEGRADED, IP_POOL_PRESSURE)

# Node-side states of one network, as agents report them.
STATE_APPLIED = "Applied"
STATE_BLOCKED = "Blocked"
STATE_INVALID = "Invalid"
STATE_REMOVED = "Removed"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    def to_dict(
        self, generation: int, now: str, previous: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        status = "True" if self.status else "False"
        since = now
        if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
            since = str(previous["lastTransitionTime"])
        return {
            "type": self.type,
            "status": status,
            "reason": self.reason,
            "message": self.message[:32000],
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }


def _list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def network_entry(report: Mapping[str, Any], network: str) -> Mapping[str, Any] | None:
    for entry in report.get("networks") or []:
        if entry.get("name") == network:
            return entry  # type: ignore[no-any-return]
    return None


def build_status(
    *,
    network: str,
    generation: int,
    selected: Sequence[str],
    reports: Mapping[str, Mapping[str, Any]],
    spec_error: str | None,
    previous_conditions: Sequence[Mapping[str, Any]],
    now: str,
    pressure_threshold: int = DEFAULT_PRESSURE_THRESHOLD,
) -> dict[str, Any]:
    """Aggregate one network's status. `reports`: node name -> CNINodeState.status."""
    ready: list[str] = []
    waiting: list[str] = []
    blocked: dict[str, Mapping[str, Any]] = {}
    invalid: dict[str, str] = {}
    shadowed: dict[str, list[str]] = {}
    missing_reports: list[str] = []
    for node in selected:
        report = reports.get(node)
        if report is None:
            missing_reports.append(node)
            continue
        files = list(report.get("shadowingFiles") or [])
        if files:
            shadowed[node] = files
        entry = network_entry(report, network)
        if entry is None:
            waiting.append(node)
            continue
        state = entry.get("state")
        if state == STATE_BLOCKED and entry.get("desiredGeneration") == generation:
            blocked[node] = entry
        if state == STATE_INVALID and entry.get("desiredGeneration") == generation:
            invalid[node] = str(entry.get("message", ""))
        if entry.get("appliedGeneration") == generation and state == STATE_APPLIED:
            ready.append(node)
        else:
            waiting.append(node)

    conditions: list[Condition] = []
    if spec_error:
        conditions.append(Condition(READY, False, "InvalidSpec", spec_error))
    elif not selected:
        conditions.append(Condition(READY, True, "NoNodesSelected", "no node matches nodeSelector"))
    elif len(ready) == len(selected):
        conditions.append(
            Condition(
                READY, True, "AllNodesReady", f"{len(ready)} node(s) run generation {generation}"
            )
        )
    else:
        conditions.append(
            Condition(
                READY,
                False,
                "NodesNotReady",
                f"{len(ready)}/{len(selected)} node(s) run generation {generation}; waiting for "
                f"{_list(sorted(set(waiting) | set(missing_reports)))}",
            )
        )
    if shadowed:
        detail = "; ".join(
            f"{node}: {', '.join(files)}" for node, files in sorted(shadowed.items())
        )
        conditions.append(Condition(SHADOWED, True, "ForeignConfigWins", detail))
    else:
        conditions.append(
            Condition(SHADOWED, False, "NoShadowing", "no foreign file wins over ours")
        )
    if blocked:
        fields: list[str] = []
        for entry in blocked.values():
            for f in entry.get("blockedFields") or []:
                if f not in fields:
                    fields.append(f)
        nodes = ", ".join(
            f"{node} ({entry.get('attachments', 0)} attachment(s))"
            for node, entry in sorted(blocked.items())
        )
        conditions.append(
            Condition(
                SWITCH_BLOCKED,
                True,
                "LiveAttachments",
                f"unsafe change of {', '.join(fields)} held on {nodes}; the last applied config "
                f"stays. Drain those nodes, then annotate cniwarden.io/proceed-generation="
                f"{generation} and cniwarden.io/proceed-nodes=<nodes>",
            )
        )
    else:
        conditions.append(Condition(SWITCH_BLOCKED, False, "NoBlockedSwitch", "nothing is held"))
    # The reason names the most serious cause (a spec no node can use, then a config
    # a node refused to write, then a silent agent); the message lists every one.
    problems: list[tuple[str, str]] = []
    if spec_error:
        problems.append(("InvalidSpec", spec_error))
    problems.extend(
        ("InvalidConfig", f"{node}: {message}") for node, message in sorted(invalid.items())
    )
    if missing_reports:
        problems.append(("NoAgentReport", f"no agent report from {_list(sorted(missing_reports))}"))
    if problems:
        conditions.append(
            Condition(DEGRADED, True, problems[0][0], "; ".join(text for _, text in problems))
        )
    else:
        conditions.append(Condition(DEGRADED, False, "AsExpected", "no problem reported"))

    pools = fullest({n: r for n, r in reports.items() if n in selected}, network)
    over = [p for p in pools if p.percent >= pressure_threshold]
    if over:
        detail = "; ".join(
            f"{p.node}: {p.used}/{p.size} ({p.percent}%) of {p.ranges}" for p in over[:10]
        )
        more = f" and {len(over) - 10} more node(s)" if len(over) > 10 else ""
        conditions.append(
            Condition(
                IP_POOL_PRESSURE,
                True,
                "AboveThreshold",
                f"{len(over)} node(s) at or above {pressure_threshold}% of a range set: "
                f"{detail}{more}. Reclaim leaked leases (`cniwarden gc` on the node), move "
                "pods, or widen the range",
            )
        )
    else:
        top = f"; fullest {pools[0].node} at {pools[0].percent}%" if pools else ""
        conditions.append(
            Condition(
                IP_POOL_PRESSURE,
                False,
                "BelowThreshold",
                f"every node below {pressure_threshold}%{top}",
            )
        )

    previous = {c.get("type"): c for c in previous_conditions}
    usage: dict[str, Any] = {}
    if pools:
        usage = {
            "poolUsage": f"{pools[0].percent}% ({pools[0].node})",
            "poolUsagePercent": pools[0].percent,
        }
    return {
        **usage,
        "observedGeneration": generation,
        "nodesSelected": len(selected),
        "nodesReady": len(ready),
        "nodesShadowed": len(shadowed),
        "nodesBlocked": len(blocked),
        "blockedNodes": sorted(blocked),
        "conditions": [c.to_dict(generation, now, previous.get(c.type)) for c in conditions],
    }


def same_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Equal apart from timestamps, so the controller patches only on real change."""

    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k != "conditions"}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions") or []
        ]
        return out

    return strip(old) == strip(new)
