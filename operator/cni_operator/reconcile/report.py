"""Step 6: the pass's CNINodeState status and the Events of state changes.

The status is the node scan (what each runtime uses, foreign files, binaries,
attachments, quarantine) with the pass's own network entries and problems put
first. An Event is posted once per change of a network's state or message on
this node, not once per pass, so a held switch does not flood `kubectl get events`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from typing import Any

from cni_operator.conditions import STATE_APPLIED, STATE_BLOCKED, STATE_INVALID
from cni_operator.node.binaries import VersionProber
from cni_operator.node.manifest import Manifest
from cni_operator.node.scan import report_dict, scan_node
from cni_operator.problems import ERROR, Problem
from cni_operator.reconcile.model import AgentEvent, NetworkEntry, NodeContext, StepOutput

_EVENT_OF_STATE = {
    STATE_INVALID: ("Warning", "InvalidConfig"),
    STATE_BLOCKED: ("Warning", "SwitchBlocked"),
    STATE_APPLIED: ("Normal", "Applied"),
}


def build_status(
    ctx: NodeContext, manifest: Manifest, pass_output: StepOutput, prober: VersionProber
) -> dict[str, Any]:
    scan = scan_node(ctx.paths, manifest, prober, node_view=True, runtimes=ctx.runtimes)
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


# Node problems that also get an Event (about the CNINodeState) when they appear:
# they need a person, and an Event reaches the usual alerting.
EVENT_PROBLEMS = frozenset(
    {
        "QuarantineJournalCorrupt",
        "QuarantineFailed",
        "NodeWriteFailed",
        "ManifestUnreadable",
        "AgentPassFailed",
    }
)


class TransitionEvents:
    """Remembers each network's last (state, message), and the node problems that
    had an Event, across passes."""

    def __init__(self, node_name: str, codes: frozenset[str] = EVENT_PROBLEMS) -> None:
        self.node_name = node_name
        self.codes = codes
        self._last: dict[str, tuple[str, str]] = {}
        self._problems: set[tuple[str, str]] = set()

    def problem_events(self, problems: list[dict[str, Any]]) -> list[AgentEvent]:
        """A Warning about this node's CNINodeState for each such problem that is new."""
        current = {
            (str(p.get("code")), str(p.get("message")))
            for p in problems
            if p.get("code") in self.codes
        }
        new = sorted(current - self._problems)
        self._problems = current
        return [
            AgentEvent(None, "Warning", code, f"node {self.node_name}: {message}")
            for code, message in new
        ]

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


def write_failure(error: BaseException) -> Problem:
    """A write on the node that failed (e.g. a full disk), said plainly: the agent's
    writes are atomic and intent-first, so nothing is half-written or lost, and the
    next pass tries again."""
    where = getattr(error, "filename", None)
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        what = f"no space left on the filesystem of {where or 'the node'}"
    elif isinstance(error, OSError) and where:
        what = f"cannot write {where}: {error.strerror or error}"
    else:
        what = str(error)
    folder = os.path.dirname(str(where)) if where else "the agent's directories"
    return Problem(
        "NodeWriteFailed",
        ERROR,
        f"{what}; the last good files stay, nothing was half-written or lost",
        f"Free space or fix the permissions of {folder} (`df -h {folder}`); the agent "
        "retries on every pass.",
        str(where) if where else None,
    )


def failed_pass_status(
    last_status: Mapping[str, Any] | None, node_name: str, error: BaseException
) -> dict[str, Any]:
    """The status to publish when a whole pass raised: the last report (or a bare
    one), with the failure as its first problem, so the heartbeat goes on and the
    cause is visible in `kubectl get cninodestates`."""
    status = dict(last_status or {"nodeName": node_name, "networks": [], "healthy": False})
    problem = Problem(
        "AgentPassFailed",
        ERROR,
        f"the agent's last pass failed ({type(error).__name__}: {error}"[:900] + "); "
        "the rest of this report is from the pass before",
        "See the agent's log for the traceback; the agent retries with a growing pause.",
    )
    others = [p for p in status.get("problems") or [] if p.get("code") != problem.code]
    status["problems"] = [problem.to_dict(), *others]
    status["problemCount"] = len(status["problems"])
    return status
