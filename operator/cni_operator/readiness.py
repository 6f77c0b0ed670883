"""The CNI-readiness taint: when a node can serve pods, and the Node taint list to write.

Pure. A node is CNI-ready when a runtime on it uses one of our configs (not
shadowed, every binary present and speaking the config's version) and every one
of our plugins in that config answers STATUS ok (the CNI 1.1 verb: our server is
up and the pool has room). Until then the node carries
`cniwarden.io/agent-not-ready:NoSchedule`, so the scheduler places no pod on a node
whose CNI cannot give it an address.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TAINT_KEY = "cniwarden.io/agent-not-ready"
TAINT_EFFECT = "NoSchedule"


@dataclass(frozen=True)
class StatusAnswer:
    """One plugin's answer to STATUS: ok, or the CNI error it gave."""

    plugin: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        return "CNI ready" if self.ready else "; ".join(self.reasons)


def judge(
    runtime_views: Sequence[tuple[str, bool, bool, str]],
    answers: Sequence[StatusAnswer],
) -> Readiness:
    """`runtime_views`: (runtime, uses our config, healthy, message) for each runtime
    this node runs; `answers`: STATUS of our plugins in the config in use."""
    reasons: list[str] = []
    if not runtime_views:
        reasons.append("no runtime to judge")
    for runtime, ours, healthy, message in runtime_views:
        if not ours:
            reasons.append(f"{runtime} does not use a cniwarden config: {message}")
        elif not healthy:
            reasons.append(f"{runtime} cannot use our config: {message}")
    reasons.extend(f"{a.plugin} STATUS: {a.detail}" for a in answers if not a.ok)
    return Readiness(not reasons, tuple(reasons))


def taints_after(node: Mapping[str, Any], tainted: bool) -> list[dict[str, Any]] | None:
    """The Node's new spec.taints with ours present or absent; None when unchanged.
    Every other taint is kept as it is."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    ours = [t for t in taints if t.get("key") == TAINT_KEY]
    others = [t for t in taints if t.get("key") != TAINT_KEY]
    if tainted:
        if len(ours) == 1 and ours[0].get("effect") == TAINT_EFFECT:
            return None
        return [*others, {"key": TAINT_KEY, "effect": TAINT_EFFECT}]
    return others if ours else None


def has_taint(node: Mapping[str, Any]) -> bool:
    return any(t.get("key") == TAINT_KEY for t in (node.get("spec") or {}).get("taints") or [])
