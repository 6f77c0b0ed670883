"""The CNI-readiness taint: when a node can serve pods, and the Node taint list to write.

Pure. A node is CNI-ready when a runtime on it uses one of our configs (not
shadowed, every binary present and speaking the config's version) and every one
of our plugins in that config answers STATUS ok (the CNI 1.1 verb: our server is
up and the pool has room). Until then the node carries
`cniwarden.io/agent-not-ready:NoSchedule`, so the scheduler places no pod on a node
whose CNI cannot give it an address.

STATUS cannot see a broken ADD path (a bridge name taken by another link, a plugin
that fails for a reason of its own), so the node is also proven by a probe: ADD,
CHECK and DEL of the config in use, in a scratch network namespace, as a runtime
would run them (`node/cniprobe.py`). The probe is not run every readiness tick:
`probe_due` runs it on the first verdict, whenever the config in use changes, on
every recovery of the other checks (a regression is judged at once without it), a
failed probe again after `retry` seconds, and a passing one again every `interval`
seconds. Each probe ADD takes a lease, makes a veth and wakes every watcher of the
lease store and the bridge; every 2 s that would be 43 200 ADDs a day per node,
noise in the server's latency histograms and pool reports. STATUS, every tick,
catches what regresses on its own (server down, pool full); what breaks ADD comes
with a change the probe follows (config, binaries) or is caught at the interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TAINT_KEY = "cniwarden.io/agent-not-ready"
TAINT_EFFECT = "NoSchedule"
# The probe's container id and scratch netns name: `cniwarden-probe-<node>-<unix
# time>-<random>`. Never a runtime's sandbox, so a lease a crashed probe leaves is
# leaked for the GC once older than the grace; the time lets a later probe tell a
# crashed probe's netns from one in progress (another agent of the same node, during
# a rolling update).
PROBE_PREFIX = "cniwarden-probe-"
NODE_NAME_CHARS = 200  # a netns name is a file name (255 bytes)


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


def probe_id(node: str, unix_time: float, token: str) -> str:
    return f"{PROBE_PREFIX}{node[:NODE_NAME_CHARS]}-{int(unix_time)}-{token}"


def probe_started(name: str, node: str) -> float | None:
    """When the probe of `node` named `name` started; None when it is not one."""
    prefix = f"{PROBE_PREFIX}{node[:NODE_NAME_CHARS]}-"
    if not name.startswith(prefix):
        return None
    stamp, _, token = name[len(prefix) :].partition("-")
    if not stamp.isdigit() or not token or "-" in token:
        return None
    return float(stamp)


def stale_probe(name: str, node: str, now: float, budget: float) -> bool:
    """A probe of this node that started longer ago than any probe may run: it was
    interrupted (a crash, a kill) and its netns is left to remove."""
    started = probe_started(name, node)
    return started is not None and now - started > budget + 1


@dataclass(frozen=True)
class ProbeResult:
    """One probe ADD + CHECK + DEL of the config(s) in use (`config`: their key)."""

    config: str
    ok: bool
    at: float  # monotonic, when it finished
    seconds: float
    detail: str
    container_id: str
    time: str = ""  # ISO, for the report

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config": self.config,
            "time": self.time,
            "seconds": round(self.seconds, 3),
            "message": self.detail[:500],
            "containerID": self.container_id,
        }


def config_key(files: Sequence[tuple[str, str]]) -> str:
    """The key of the configs in use: `(file, sha256)` of each, sorted."""
    return ";".join(f"{name}@{sha[:16]}" for name, sha in sorted(set(files)))


def probe_due(
    last: ProbeResult | None,
    key: str,
    base: Readiness,
    *,
    base_was_ready: bool,
    now: float,
    interval: float,
    retry: float,
) -> bool:
    """Whether to probe now (`now`, monotonic). Never when the other checks fail (the
    node is tainted already) or the probe is off (`interval` <= 0)."""
    if interval <= 0 or not base.ready or not key:
        return False
    if last is None or last.config != key or not base_was_ready:
        return True
    return now - last.at >= (interval if last.ok else min(retry, interval))


def with_probe(base: Readiness, probe: ProbeResult | None, key: str, enabled: bool) -> Readiness:
    """The verdict with the probe's: ready only when both are, for this very config."""
    if not enabled or not base.ready:
        return base
    if probe is None or probe.config != key:
        return Readiness(False, (f"probe ADD + CHECK + DEL of {key or 'the config'} not run yet",))
    if not probe.ok:
        return Readiness(False, (f"probe {probe.detail}",))
    return base
