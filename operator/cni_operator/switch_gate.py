"""The unsafe-switch gate: which spec changes would break running pods.

A pod cannot change networks while it runs: its DEL is run later with whatever
config is on disk, and its address lives in the IPAM store of the old ranges.
So a change of plugin types, IPAM ranges or store, bridge name, VLAN, masquerade
or the network that wins on the node must wait until the node has no attachments,
or until an operator acknowledges this generation for this node (after draining).
Changes that only affect new pods (MTU, hairpin, routes, DNS, a chained plugin
appended at the end) roll out.

Pure: works on NetworkSpec values and counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_operator.api import ACK_GENERATION_ANNOTATION, ACK_NODES_ANNOTATION, NetworkSpec

# Plugin keys whose change strands running pods (their DEL or their traffic).
UNSAFE_PLUGIN_KEYS = frozenset(
    {"bridge", "vlan", "vlanTrunk", "master", "ipMasq", "ipMasqBackend", "portIsolation"}
)
# host-local keys that decide which addresses exist and where leases are stored.
UNSAFE_IPAM_KEYS = frozenset(
    {"type", "ranges", "subnet", "rangeStart", "rangeEnd", "gateway", "dataDir"}
)


@dataclass
class SpecChange:
    """The fields that differ between two specs, and which of them are unsafe."""

    changed: list[str] = field(default_factory=list)
    unsafe: list[str] = field(default_factory=list)

    @property
    def is_safe(self) -> bool:
        return not self.unsafe

    def add(self, path: str, *, unsafe: bool) -> None:
        self.changed.append(path)
        if unsafe:
            self.unsafe.append(path)


def _compare_mapping(
    change: SpecChange,
    prefix: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    unsafe_keys: frozenset[str],
) -> None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            change.add(f"{prefix}.{key}", unsafe=key in unsafe_keys)


def classify(old: NetworkSpec, new: NetworkSpec) -> SpecChange:
    """Compare the applied spec with a new one. Priority changes are judged
    separately (by which network wins on the node), not here."""
    change = SpecChange()
    if old.networkName != new.networkName:
        change.add("networkName", unsafe=True)
    if old.cniVersion != new.cniVersion:
        change.add("cniVersion", unsafe=False)
    if old.priority != new.priority:
        change.add("priority", unsafe=False)
    for key in ("nodeSelector", "shadowPolicy", "binaries", "disableCheck", "disableGC"):
        if getattr(old, key) != getattr(new, key):
            change.add(key, unsafe=False)
    old_plugins, new_plugins = old.plugins, new.plugins
    for index in range(max(len(old_plugins), len(new_plugins))):
        where = f"plugins[{index}]"
        if index >= len(old_plugins):
            change.add(f"{where} (appended {new_plugins[index].get('type')})", unsafe=False)
            continue
        if index >= len(new_plugins):
            change.add(f"{where} (removed {old_plugins[index].get('type')})", unsafe=True)
            continue
        before, after = old_plugins[index], new_plugins[index]
        if before.get("type") != after.get("type"):
            change.add(f"{where}.type", unsafe=True)
            continue
        plain_before = {k: v for k, v in before.items() if k != "ipam"}
        plain_after = {k: v for k, v in after.items() if k != "ipam"}
        _compare_mapping(change, where, plain_before, plain_after, UNSAFE_PLUGIN_KEYS)
        ipam_before = before.get("ipam") or {}
        ipam_after = after.get("ipam") or {}
        if isinstance(ipam_before, dict) and isinstance(ipam_after, dict):
            _compare_mapping(change, f"{where}.ipam", ipam_before, ipam_after, UNSAFE_IPAM_KEYS)
    return change


@dataclass(frozen=True)
class GateDecision:
    allowed: bool
    reason: str
    unsafe_fields: tuple[str, ...] = ()


def acknowledged(annotations: Mapping[str, str], generation: int, node: str) -> bool:
    """Has an operator acknowledged this exact generation for this node?

    `cniwarden.io/proceed-generation: "<metadata.generation>"` and
    `cniwarden.io/proceed-nodes: "node-a,node-b"` (or `*` for every node).
    """
    raw_generation = annotations.get(ACK_GENERATION_ANNOTATION, "").strip()
    if not raw_generation.isdigit() or int(raw_generation) != generation:
        return False
    nodes = {n.strip() for n in annotations.get(ACK_NODES_ANNOTATION, "").split(",") if n.strip()}
    return "*" in nodes or node in nodes


def decide(
    unsafe_fields: list[str], attachments: int, is_acknowledged: bool, network: str
) -> GateDecision:
    """Apply, or hold the last applied config on this node."""
    if not unsafe_fields:
        return GateDecision(True, "safe change")
    if attachments == 0:
        return GateDecision(True, "unsafe change, but no pod is attached on this node")
    if is_acknowledged:
        return GateDecision(
            True, "unsafe change acknowledged for this generation and node", tuple(unsafe_fields)
        )
    return GateDecision(
        False,
        f"{', '.join(unsafe_fields)} changed while {attachments} attachment(s) of network "
        f"{network} are live on this node; drain the node, then set annotations "
        f"{ACK_GENERATION_ANNOTATION}=<generation> and {ACK_NODES_ANNOTATION}=<node> to proceed",
        tuple(unsafe_fields),
    )
