"""The Verify step's probe pod, as pure decisions: which peers to probe, the pod's
manifest (a shell script that pings each peer and exits 0 only when all answer),
and the verdict read from the finished pod and its log.

The probe runs on the node just switched, so its address comes from the new
network; it must reach a pod on an already migrated node, a pod on a node not yet
migrated (both networks route each other's pod CIDRs, host-gw) and its default
route's gateway (the node, which forwards the pod's traffic out). A kind with no
candidate pod (the first node has no migrated neighbour) is skipped, and named.

Pure: no kopf, no API client, no subprocess.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni_operator.migration.spec import PeerKind

PROBE_LABEL = "cniwarden.io/migration-probe"  # value: the node probed
# The peers, as given to the pod: a restarted controller judges the pod by them.
PEERS_ANNOTATION = "cniwarden.io/probe-peers"
# Pods carrying this label are preferred as peers (any value); without one, any
# Running pod with a pod-network address on a candidate node is taken.
PEER_LABEL = "cniwarden.io/probe-peer"
PING_WAIT_SECONDS = 2
DEFAULT_ROUTE = "DefaultRoute"

PENDING, PASSED, FAILED = "pending", "passed", "failed"


@dataclass(frozen=True)
class Peer:
    """One address the probe must reach; `what` names it in the verdict."""

    kind: PeerKind
    address: str
    what: str


@dataclass(frozen=True)
class PeerChoice:
    peers: tuple[Peer, ...]
    skipped: tuple[str, ...]  # one note per peer kind without a candidate


@dataclass(frozen=True)
class Verdict:
    state: str  # PENDING | PASSED | FAILED
    cause: str = ""
    notes: str = ""  # what was probed, for the Event


def probe_pod_name(node: str, attempt: int) -> str:
    """A name unique per node and attempt (a restarted controller finds its pod again;
    a retried node never reads an older attempt's result)."""
    digest = hashlib.sha256(f"{node}/{attempt}".encode()).hexdigest()[:10]
    return f"cniwarden-probe-{digest}"


def _running_address(pod: Mapping[str, Any]) -> str | None:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") != "Running":
        return None
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    if (pod.get("metadata") or {}).get("labels", {}).get(PROBE_LABEL) is not None:
        return None
    address = status.get("podIP")
    return str(address) if address else None


def _pick(pods: Iterable[Mapping[str, Any]], nodes: set[str]) -> tuple[str, str] | None:
    """The first suitable pod (labelled peers first, then by namespace/name) on `nodes`."""
    found = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        address = _running_address(pod)
        if node not in nodes or address is None:
            continue
        labelled = PEER_LABEL in (meta.get("labels") or {})
        found.append((not labelled, meta.get("namespace", ""), meta.get("name", ""), address, node))
    if not found:
        return None
    _, namespace, name, address, node = min(found)
    return address, f"pod {namespace}/{name} on node {node} ({address})"


def choose_peers(
    kinds: Sequence[PeerKind],
    node: str,
    migrated: Iterable[str],
    unmigrated: Iterable[str],
    pods: Iterable[Mapping[str, Any]],
) -> PeerChoice:
    """The pod peers of `kinds` (DefaultRoute is found by the probe itself)."""
    pods = list(pods)
    groups = {
        "MigratedNode": set(migrated) - {node},
        "UnmigratedNode": set(unmigrated) - {node},
    }
    peers: list[Peer] = []
    skipped: list[str] = []
    for kind in kinds:
        if kind == DEFAULT_ROUTE:
            peers.append(Peer(kind, "", "the pod's default route gateway"))
            continue
        picked = _pick(pods, groups[kind])
        if picked is None:
            skipped.append(f"{kind}: no Running pod on such a node to probe")
        else:
            peers.append(Peer(kind, picked[0], picked[1]))
    return PeerChoice(tuple(peers), tuple(skipped))


def probe_script(peers: Sequence[Peer]) -> str:
    """Print the pod's address, then one `ok|fail INDEX ADDRESS` line per peer; exit 1
    when any failed. Addresses are validated: nothing but an IP reaches the shell."""
    lines = [
        "rc=0",
        "ip -o -4 addr show dev eth0 | awk '{print \"address\", $4}'",
    ]
    for index, peer in enumerate(peers):
        if peer.kind == DEFAULT_ROUTE:
            lines.append("t=$(ip route | awk '/^default/ {print $3; exit}')")
            lines.append(f'if [ -z "$t" ]; then echo "fail {index} none"; rc=1; else')
            target = '"$t"'
        else:
            target = str(ipaddress.ip_address(peer.address))
            lines.append(f"t={target}; if true; then")
        lines.append(
            f"if ping -c1 -W{PING_WAIT_SECONDS} {target} >/dev/null 2>&1; "
            f'then echo "ok {index} $t"; else echo "fail {index} $t"; rc=1; fi; fi'
        )
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"


def probe_pod(
    name: str,
    namespace: str,
    node: str,
    *,
    image: str,
    peers: Sequence[Peer],
    deadline_seconds: int,
) -> dict[str, Any]:
    """The probe pod, bound to `node` (no scheduler: the node is cordoned), tolerating
    every taint, never restarted, with NET_RAW for ping on runtimes that drop it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {PROBE_LABEL: node},
            "annotations": {
                PEERS_ANNOTATION: json.dumps(
                    [{"kind": p.kind, "address": p.address, "what": p.what} for p in peers]
                )
            },
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "activeDeadlineSeconds": deadline_seconds,
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "command": ["sh", "-c", probe_script(peers)],
                    "securityContext": {"capabilities": {"add": ["NET_RAW"]}},
                }
            ],
        },
    }


def peers_of(pod: Mapping[str, Any]) -> tuple[Peer, ...] | None:
    """The peers a probe pod was given (None: not a probe pod this module made)."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(PEERS_ANNOTATION)
    try:
        items = json.loads(raw) if raw else None
        if not isinstance(items, list):
            return None
        return tuple(Peer(i["kind"], str(i["address"]), str(i["what"])) for i in items)
    except (ValueError, TypeError, KeyError):
        return None


_RESULT = re.compile(r"^(ok|fail) (\d+) (\S*)$")
_ADDRESS = re.compile(r"^address (\S+)$")


def _in_cidrs(address: str, cidrs: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("/", maxsplit=1)[0])
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def judge(
    pod: Mapping[str, Any] | None, log: str, peers: Sequence[Peer], pod_cidrs: Sequence[str]
) -> Verdict:
    """The probe's verdict from its pod (None: gone) and, once finished, its log."""
    if pod is None:
        return Verdict(FAILED, "the probe pod disappeared before it finished")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase not in ("Succeeded", "Failed"):
        return Verdict(PENDING, f"probe pod {phase}")
    address = status.get("podIP") or ""
    results: dict[int, tuple[bool, str]] = {}
    for line in log.splitlines():
        if match := _ADDRESS.match(line.strip()):
            address = address or match.group(1).split("/", maxsplit=1)[0]
        elif match := _RESULT.match(line.strip()):
            results[int(match.group(2))] = (match.group(1) == "ok", match.group(3))
    if not address:
        return Verdict(FAILED, f"the probe pod ended {phase} without a pod-network address")
    if not _in_cidrs(address, pod_cidrs):
        return Verdict(
            FAILED,
            f"the probe pod got {address}, outside the node's pod CIDRs {', '.join(pod_cidrs)}",
        )
    failed, probed = [], []
    for index, peer in enumerate(peers):
        ok, target = results.get(index, (False, ""))
        label = f"{peer.kind} ({peer.what}{', ' + target if peer.kind == DEFAULT_ROUTE else ''})"
        if index not in results:
            failed.append(f"{label}: no result (the probe ended {phase})")
        elif not ok:
            failed.append(f"{label}: no answer to ping from {address}")
        else:
            probed.append(label)
    if failed:
        return Verdict(FAILED, "probe failed: " + "; ".join(failed))
    if phase != "Succeeded":
        return Verdict(FAILED, f"the probe pod ended {phase}")
    return Verdict(PASSED, notes=f"probe pod {address} reached " + "; ".join(probed))
