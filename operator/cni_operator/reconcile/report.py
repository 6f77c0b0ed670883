"""Step 6: the pass's CNINodeState status and the Events of state changes.

The status is the node scan (what each runtime uses, foreign files, binaries,
attachments, quarantine) with the pass's own network entries and problems put
first. An Event is posted once per change of a network's state or message on
this node, not once per pass, so a held switch does not flood `kubectl get events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cni_operator.conditions import STATE_APPLIED, STATE_BLOCKED, STATE_INVALID
from cni_operator.node.binaries import VersionProber
from cni_operator.node.manifest import Manifest
from cni_operator.node.scan import report_dict, scan_node
from cni_operator.reconcile.model import AgentEvent, NetworkEntry, NodeContext, StepOutput

_EVENT_OF_STATE = {
    STATE_INVALID: ("Warning", "InvalidConfig"),
    STATE_BLOCKED: ("Warning", "SwitchBlocked"),
    STATE_APPLIED: ("Normal", "Applied"),
}


def build_status(
    ctx: NodeContext, manifest: Manifest, pass_output: StepOutput, prober: VersionProber
) -> dict[str, Any]:
    scan = scan_node(ctx.paths, manifest, prober, node_view=True)
    status = report_dict(scan, manifest)
    status["problems"] = [p.to_dict() for p in pass_output.problems] + status["problems"]
    status["networks"] = [
        pass_output.entries[name].to_dict() for name in sorted(pass_output.entries)
    ]
    status["nodeName"] = ctx.node_name
    status["hostRoot"] = str(ctx.paths.root)
    status["healthy"] = not scan.broken
    status["problemCount"] = len(status["problems"])
    return status


class TransitionEvents:
    """Remembers each network's last (state, message) across passes."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._last: dict[str, tuple[str, str]] = {}

    def events(self, entries: Mapping[str, NetworkEntry]) -> list[AgentEvent]:
        """One Event per change of a network's state or message on this node."""
        out = []
        for name, entry in entries.items():
            key = (entry.state, entry.message)
            if self._last.get(name) == key:
                continue
            self._last[name] = key
            kind = _EVENT_OF_STATE.get(entry.state)
            if kind is not None:
                message = f"node {self.node_name}: {entry.message}"
                out.append(AgentEvent(name, kind[0], kind[1], message))
        return out
