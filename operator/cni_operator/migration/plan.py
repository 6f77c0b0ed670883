"""Which nodes a CNIMigration moves, in which waves; whether the old and the new
network can keep pods connected across nodes while it runs; which pods to evict.

Pods of both networks reach each other during a migration only when both give a
node's pods addresses from that node's `spec.podCIDRs` and the nodes route each
other's pod CIDRs (host-gw): then a pod's address says which node it is on,
whatever network gave it. `check_compatibility` refuses every from/to that cannot
hold this, with one specific reason per problem.

Pure: plain values in (Node, Pod and parsed conflist JSON as dicts), plans out.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni_operator.api import (
    ACK_GENERATION_ANNOTATION,
    ACK_NODES_ANNOTATION,
    USE_POD_CIDR,
    NetworkSpec,
    Routing,
)
from cni_operator.hostgw import HOST_GATEWAY
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import NodeRecord
from cni_operator.switch_gate import acknowledged

# The node label the migration sets to switch a node: the target CNINetwork selects
# nodes by it (spec.nodeSelector), so setting it makes the node's agent write the
# new network's file, and removing it makes the agent remove that file and restore
# the quarantined old one (reconcile/removal.py).
SWITCH_LABEL = "cniwarden.io/cni"
# The reference bridge plugin's (and ours) bridge when a config names none.
DEFAULT_BRIDGE = "cni0"
# Old plugins whose host side keeps working beside a new bridge on the same subnet.
BRIDGE_TYPES = frozenset({"bridge", "cniwarden-bridge"})
POINT_TO_POINT_TYPES = frozenset({"ptp"})


# --- nodes and waves ---------------------------------------------------------------


@dataclass(frozen=True)
class NodeInfo:
    """What the plan needs from a Node object."""

    name: str
    labels: Mapping[str, str]
    pod_cidrs: tuple[str, ...]
    unschedulable: bool = False

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeInfo:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        cidrs = list(spec.get("podCIDRs") or [])
        if not cidrs and spec.get("podCIDR"):
            cidrs = [spec["podCIDR"]]
        return cls(
            str(meta.get("name", "")),
            dict(meta.get("labels") or {}),
            tuple(str(c) for c in cidrs),
            bool(spec.get("unschedulable", False)),
        )


def selected(nodes: Iterable[NodeInfo], selector: Mapping[str, str]) -> list[NodeInfo]:
    """Nodes whose labels match every pair of `selector` (empty: all), by name."""
    return sorted(
        (n for n in nodes if all(n.labels.get(k) == v for k, v in selector.items())),
        key=lambda n: n.name,
    )


def waves(nodes: Sequence[NodeInfo], spec: MigrationSpec) -> list[list[str]]:
    """Nodes grouped into waves, in the order they run. With `waves.byLabel`:
    the values of `waves.order` first (in that order), then the other values
    sorted, then nodes without the label; without it, one wave. Names are sorted
    inside a wave, so the plan is the same on every controller restart."""
    chosen = selected(nodes, spec.nodeSelector)
    key = spec.waves.byLabel
    if key is None:
        return [[n.name for n in chosen]] if chosen else []
    groups: dict[str | None, list[str]] = {}
    for node in chosen:
        groups.setdefault(node.labels.get(key), []).append(node.name)
    listed = [v for v in spec.waves.order if v in groups]
    rest = sorted(v for v in groups if v is not None and v not in spec.waves.order)
    ordered: list[str | None] = [*listed, *rest]
    if None in groups:
        ordered.append(None)
    return [groups[value] for value in ordered]


def initial_records(nodes: Sequence[NodeInfo], spec: MigrationSpec) -> list[NodeRecord]:
    """The node list a migration is fixed to when it starts (`status.nodes`): a
    node that joins later is not part of it (nodesTotal stays what it was)."""
    return [
        NodeRecord(name, index) for index, wave in enumerate(waves(nodes, spec)) for name in wave
    ]


# --- the compatibility check -------------------------------------------------------


@dataclass(frozen=True)
class OldNetwork:
    """A foreign conflist as the check reads it."""

    name: str
    main_type: str  # the first plugin's type
    bridge: str | None  # for a bridge plugin: its bridge device
    ipam_type: str | None
    subnets: tuple[str, ...]  # every host-local range subnet, as written

    @classmethod
    def from_conflist(cls, content: bytes) -> OldNetwork:
        """Parse a .conflist (or a single-plugin .conf); ValueError says why not."""
        try:
            raw = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"not JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        plugins = raw.get("plugins") if "plugins" in raw else [raw]
        if not isinstance(plugins, list) or not plugins or not isinstance(plugins[0], dict):
            raise ValueError("no plugins")
        first = plugins[0]
        ipam: dict[str, Any] = first["ipam"] if isinstance(first.get("ipam"), dict) else {}
        subnets = [str(ipam["subnet"])] if ipam.get("subnet") else []
        for range_set in ipam.get("ranges") or []:
            for item in range_set if isinstance(range_set, list) else []:
                if isinstance(item, dict) and item.get("subnet"):
                    subnets.append(str(item["subnet"]))
        main_type = str(first.get("type", ""))
        bridge = str(first.get("bridge") or DEFAULT_BRIDGE) if main_type in BRIDGE_TYPES else None
        return cls(
            str(raw.get("name", "")),
            main_type,
            bridge,
            str(ipam["type"]) if ipam.get("type") else None,
            tuple(subnets),
        )

    def to_report(self) -> dict[str, Any]:
        """As the agent reports it in CNINodeState.status.foreignFiles[].network."""
        return {
            "name": self.name,
            "type": self.main_type,
            "bridge": self.bridge,
            "ipamType": self.ipam_type,
            "subnets": list(self.subnets),
        }

    @classmethod
    def from_report(cls, raw: Mapping[str, Any]) -> OldNetwork:
        return cls(
            str(raw.get("name") or ""),
            str(raw.get("type") or ""),
            raw.get("bridge"),
            raw.get("ipamType"),
            tuple(str(s) for s in raw.get("subnets") or []),
        )


def old_network_report(content: bytes | None) -> dict[str, Any]:
    """A foreign file's network for the node report, or why it cannot be read."""
    if content is None:
        return {"error": "unreadable"}
    try:
        return OldNetwork.from_conflist(content).to_report()
    except ValueError as error:
        return {"error": str(error)}


def old_network_on(node_state: Mapping[str, Any] | None, name: str) -> OldNetwork | None:
    """The foreign network `name` as the node's agent reported it (the first file
    the runtime would read, i.e. the reported order), or None."""
    status = (node_state or {}).get("status") or {}
    for entry in status.get("foreignFiles") or []:
        network = entry.get("network") or {}
        if network.get("name") == name and not network.get("error"):
            return OldNetwork.from_report(network)
    return None


@dataclass(frozen=True)
class NodeNetworks:
    """One node as the check needs it: its pod CIDRs and the old network there
    (None: the node has no file of that network)."""

    node: NodeInfo
    old: OldNetwork | None


@dataclass(frozen=True)
class Refusal:
    node: str | None  # None: about the networks, not one node
    reason: str

    def __str__(self) -> str:
        return self.reason if self.node is None else f"node {self.node}: {self.reason}"


def _networks(cidrs: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _routing(spec: NetworkSpec) -> Routing:
    return spec.routing if spec.routing is not None else Routing()


def _new_network_bridge(spec: NetworkSpec) -> str | None:
    first = spec.plugins[0]
    if str(first.get("type", "")) not in BRIDGE_TYPES:
        return None
    return str(first.get("bridge") or DEFAULT_BRIDGE)


def _uses_pod_cidr(spec: NetworkSpec) -> bool:
    ipam = spec.plugins[0].get("ipam") or {}
    if ipam.get("subnet") == USE_POD_CIDR:
        return True
    return any(
        isinstance(item, dict) and item.get("subnet") == USE_POD_CIDR
        for range_set in ipam.get("ranges") or []
        for item in range_set
    )


def _target_refusals(to_name: str, to: NetworkSpec) -> list[Refusal]:
    out: list[Refusal] = []
    if _routing(to).mode != HOST_GATEWAY:
        out.append(
            Refusal(
                None,
                f"to.cniNetwork {to_name} has routing.mode {_routing(to).mode}: it must be "
                f"{HOST_GATEWAY}, or pods on migrated nodes cannot reach pods on the others",
            )
        )
    if not _uses_pod_cidr(to):
        out.append(
            Refusal(
                None,
                f"to.cniNetwork {to_name}: its first plugin's IPAM must allocate from "
                f"subnet {USE_POD_CIDR}, so each node's pods keep the node's pod CIDR",
            )
        )
    if to.nodeSelector.get(SWITCH_LABEL) != to_name:
        out.append(
            Refusal(
                None,
                f"to.cniNetwork {to_name} must select nodes by {SWITCH_LABEL}={to_name} "
                f"in spec.nodeSelector: the migration switches a node by setting that label",
            )
        )
    if to.shadowPolicy != "Quarantine":
        out.append(
            Refusal(
                None,
                f"to.cniNetwork {to_name} needs shadowPolicy Quarantine: the old file is "
                "moved aside with a journal entry, so a rollback restores it byte for byte",
            )
        )
    return out


def _old_refusals(
    entry: NodeNetworks, spec: MigrationSpec, new_bridge: str | None
) -> list[Refusal]:
    node, old = entry.node, entry.old
    if old is None:
        return [
            Refusal(
                node.name, f"has no config file of {spec.from_label}; skip it or select fewer nodes"
            )
        ]
    if old.main_type not in BRIDGE_TYPES | POINT_TO_POINT_TYPES:
        return [
            Refusal(
                node.name,
                f"{spec.from_label} starts with plugin type {old.main_type or '(none)'}; only "
                f"{', '.join(sorted(BRIDGE_TYPES | POINT_TO_POINT_TYPES))} with host-local IPAM "
                "over the node's pod CIDR qualify (docs/migration.md)",
            )
        ]
    out: list[Refusal] = []
    if old.ipam_type != "host-local":
        out.append(
            Refusal(
                node.name, f"{spec.from_label} uses IPAM {old.ipam_type}; only host-local qualifies"
            )
        )
    try:
        old_subnets = set(_networks(old.subnets))
        pod_cidrs = set(_networks(node.pod_cidrs))
    except ValueError as error:
        return [*out, Refusal(node.name, f"a subnet is not a CIDR: {error}")]
    if old_subnets != pod_cidrs:
        out.append(
            Refusal(
                node.name,
                f"{spec.from_label} allocates from {', '.join(old.subnets) or 'nothing'}, not "
                f"from the node's pod CIDR {', '.join(node.pod_cidrs)}: the new network "
                "uses the pod CIDR, so the per-node ranges would change mid-migration",
            )
        )
    if old.bridge is not None and new_bridge is not None and old.bridge != new_bridge:
        out.append(
            Refusal(
                node.name,
                f"{spec.from_label} uses bridge {old.bridge} and the new network bridge "
                f"{new_bridge}: both would hold the gateway of the same pod CIDR; give the "
                f"new network bridge {old.bridge}",
            )
        )
    return out


def check_compatibility(
    spec: MigrationSpec,
    to: NetworkSpec,
    nodes: Sequence[NodeNetworks],
    from_network: NetworkSpec | None = None,
) -> list[Refusal]:
    """Every reason the migration cannot keep cross-node connectivity; empty when
    it can. `from_network`: the old CNINetwork's spec when `from` names one (its
    nodes need no conflist: a HostGateway/usePodCIDR network allocates from the
    pod CIDR by construction)."""
    out = _target_refusals(spec.to.cniNetwork, to)
    if from_network is not None:
        name = spec.source.cniNetwork
        if _routing(from_network).mode != HOST_GATEWAY or not _uses_pod_cidr(from_network):
            out.append(
                Refusal(
                    None,
                    f"from.cniNetwork {name} must route with {HOST_GATEWAY} and allocate "
                    f"from {USE_POD_CIDR}, like the new network",
                )
            )
        old_bridge, new_bridge = _new_network_bridge(from_network), _new_network_bridge(to)
        if old_bridge is not None and new_bridge is not None and old_bridge != new_bridge:
            out.append(
                Refusal(
                    None,
                    f"from.cniNetwork {name} uses bridge {old_bridge} and to.cniNetwork "
                    f"{spec.to.cniNetwork} bridge {new_bridge}: give both the same bridge",
                )
            )
    cluster: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    with contextlib.suppress(ValueError):  # the CNINetwork's own validation names it
        cluster = _networks(_routing(to).clusterCIDRs)
    seen: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
    for entry in nodes:
        node = entry.node
        if not node.pod_cidrs:
            out.append(Refusal(node.name, "has no spec.podCIDRs: host-gw cannot route its pods"))
            continue
        try:
            cidrs = _networks(node.pod_cidrs)
        except ValueError as error:
            out.append(Refusal(node.name, f"spec.podCIDRs holds a non-CIDR: {error}"))
            continue
        for cidr in cidrs:
            if cluster and not any(
                cidr.version == c.version and cidr.subnet_of(c)  # type: ignore[arg-type]
                for c in cluster
            ):
                out.append(
                    Refusal(
                        node.name,
                        f"pod CIDR {cidr} lies outside to.cniNetwork's routing.clusterCIDRs "
                        f"{', '.join(_routing(to).clusterCIDRs)}: host-gw would not route it",
                    )
                )
            for other, owner in seen:
                if cidr.overlaps(other):
                    out.append(
                        Refusal(
                            node.name,
                            f"pod CIDR {cidr} overlaps node {owner}'s {other}: an address "
                            "would not say which node its pod is on",
                        )
                    )
            seen.append((cidr, node.name))
        if from_network is None:
            out.extend(_old_refusals(entry, spec, _new_network_bridge(to)))
    return out


# --- which pods to evict -----------------------------------------------------------

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class EvictionPlan:
    evict: tuple[PodRef, ...]  # to evict through the Eviction API
    leaving: tuple[PodRef, ...]  # terminating already: waited for, not evicted again
    kept: tuple[tuple[PodRef, str], ...]  # (pod, why it stays)

    @property
    def remaining(self) -> int:
        """Pods the Evict step still waits for (`NodeFacts.pods_to_evict`)."""
        return len(self.evict) + len(self.leaving)


def _ref(pod: Mapping[str, Any]) -> PodRef:
    meta = pod.get("metadata") or {}
    return PodRef(
        str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", ""))
    )


def eviction_plan(pods: Iterable[Mapping[str, Any]]) -> EvictionPlan:
    """Pods of a node to evict before its switch: every pod with a network of its
    own that is still running. Kept: hostNetwork pods (they have no pod network),
    static and mirror pods (the kubelet owns them; the Eviction API cannot move
    them), DaemonSet pods (their controller would put them back on the node at
    once, ignoring the cordon), and pods already finished. Pods already
    terminating are waited for, not evicted again."""
    evict: list[PodRef] = []
    leaving: list[PodRef] = []
    kept: list[tuple[PodRef, str]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        phase = (pod.get("status") or {}).get("phase")
        owners = meta.get("ownerReferences") or []
        ref = _ref(pod)
        if spec.get("hostNetwork"):
            kept.append((ref, "hostNetwork pod: it uses no pod network"))
        elif MIRROR_ANNOTATION in (meta.get("annotations") or {}) or any(
            o.get("kind") == "Node" for o in owners
        ):
            kept.append((ref, "static pod: the kubelet owns it"))
        elif any(o.get("kind") == "DaemonSet" and o.get("controller") for o in owners):
            kept.append((ref, "DaemonSet pod: its controller recreates it on the node at once"))
        elif phase in ("Succeeded", "Failed"):
            kept.append((ref, f"pod already {phase}: it holds no address"))
        elif meta.get("deletionTimestamp"):
            leaving.append(ref)
        else:
            evict.append(ref)
    return EvictionPlan(tuple(evict), tuple(leaving), tuple(kept))


# --- the switch gate's acknowledgement ------------------------------------------------


def acknowledgement(
    annotations: Mapping[str, str], generation: int, node: str
) -> dict[str, str] | None:
    """The target CNINetwork's annotations that acknowledge its `generation` for
    `node` as well (None: already acknowledged). The switch gate (`switch_gate`)
    holds a takeover while pods of the old network are attached on the node (the
    DaemonSet pods a drain leaves); the drained node is what the acknowledgement
    asserts, so the migration gives it for exactly that node and generation. Nodes
    acknowledged for this generation before stay; another generation's are dropped,
    as the gate ignores them anyway."""
    if acknowledged(annotations, generation, node):
        return None
    nodes: set[str] = {node}
    if annotations.get(ACK_GENERATION_ANNOTATION, "").strip() == str(generation):
        raw = annotations.get(ACK_NODES_ANNOTATION, "")
        nodes |= {n.strip() for n in raw.split(",") if n.strip()}
    return {
        ACK_GENERATION_ANNOTATION: str(generation),
        ACK_NODES_ANNOTATION: ",".join(sorted(nodes)),
    }


# --- what a node's agent reports -----------------------------------------------------


@dataclass(frozen=True)
class RuntimeView:
    """The network the node's runtime uses, from its CNINodeState."""

    network: str | None  # None: no report, or the runtimes judged disagree
    healthy: bool
    message: str


def runtime_view(node_state: Mapping[str, Any] | None) -> RuntimeView:
    """The runtimes the agent judges the node by (`status.runtime.judgedBy`, every
    runtime when unidentified) must all name one network for it to count."""
    status = (node_state or {}).get("status") or {}
    views = status.get("runtimes") or {}
    judged = list((status.get("runtime") or {}).get("judgedBy") or views)
    if not judged:
        return RuntimeView(None, False, "the node's agent has not reported yet")
    networks = {str((views.get(r) or {}).get("network") or "") for r in judged}
    healthy = all(bool((views.get(r) or {}).get("healthy")) for r in judged)
    messages = "; ".join(
        f"{r}: {(views.get(r) or {}).get('message', '')}" for r in judged if views.get(r)
    )
    if len(networks) != 1 or "" in networks:
        return RuntimeView(None, healthy, f"runtimes disagree or use no network ({messages})")
    return RuntimeView(networks.pop(), healthy, messages)


def agent_word_on(node_state: Mapping[str, Any] | None, network: str) -> str:
    """What the node's agent reports about `network` when it did not apply it (its
    state and message: a missing binary, a held gate), for a failed switch's cause;
    "" when it reports nothing of the kind."""
    status = (node_state or {}).get("status") or {}
    for entry in status.get("networks") or []:
        if not isinstance(entry, Mapping) or entry.get("name") != network:
            continue
        state, message = entry.get("state"), str(entry.get("message") or "")
        if state != "Applied" and (state or message):
            return f"{state}: {message}"[:600] if message else str(state)
    return ""
