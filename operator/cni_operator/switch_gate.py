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
# How the gate names a key in its report, whatever the spelling in the spec.
_CANONICAL = {key.lower(): key for key in (*UNSAFE_PLUGIN_KEYS, *UNSAFE_IPAM_KEYS, "ipam")}


def go_view(value: Any) -> Any:
    """A config value as the plugins read it, for comparison.

    The plugins (ours, see node_plugin.cni.gomodel, and the reference ones, Go's
    encoding/json) match object keys to their fields case-insensitively, so keys
    fold to lower case here: `Bridge` and `bridge` are one field, and respelling it
    is no change. Where an object spells one key twice, our plugins take the exact
    spelling and Go's decoder the last one; those spellings then stay apart (a
    tuple of (spelling, value)), so a change to any of them is still seen.
    """
    if isinstance(value, dict):
        groups: dict[str, list[tuple[str, Any]]] = {}
        for key, item in value.items():
            groups.setdefault(str(key).lower(), []).append((str(key), go_view(item)))
        return {k: v[0][1] if len(v) == 1 else tuple(v) for k, v in groups.items()}
    if isinstance(value, list):
        return [go_view(item) for item in value]
    return value


def _shown(folded: str, *spelled_in: Mapping[str, Any]) -> str:
    """The key's canonical name if the gate knows it, else as the spec spells it."""
    if folded in _CANONICAL:
        return _CANONICAL[folded]
    for mapping in spelled_in:
        for key in mapping:
            if str(key).lower() == folded:
                return str(key)
    return folded


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
    *,
    skip: str | None = None,
) -> None:
    """Compare two objects field by field as the plugins read them (`go_view`)."""
    old_view, new_view = go_view(dict(old)), go_view(dict(new))
    unsafe = {key.lower() for key in unsafe_keys}
    for key in sorted(set(old_view) | set(new_view)):
        if key != skip and old_view.get(key) != new_view.get(key):
            change.add(f"{prefix}.{_shown(key, new, old)}", unsafe=key in unsafe)


def _field(mapping: Mapping[str, Any], name: str) -> Any:
    """`mapping[name]` as the plugins read it (any spelling, see `go_view`)."""
    return go_view(dict(mapping)).get(name.lower())


def _spellings(mapping: Mapping[str, Any], name: str) -> list[Any]:
    """The raw values of `name` in every spelling the object has."""
    return [value for key, value in mapping.items() if str(key).lower() == name.lower()]


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
        if _field(before, "type") != _field(after, "type"):
            change.add(f"{where}.type", unsafe=True)
            continue
        _compare_mapping(change, where, before, after, UNSAFE_PLUGIN_KEYS, skip="ipam")
        if _field(before, "ipam") == _field(after, "ipam"):
            continue
        old_ipam, new_ipam = _spellings(before, "ipam"), _spellings(after, "ipam")
        single = len(old_ipam) <= 1 and len(new_ipam) <= 1
        old_dict, new_dict = (old_ipam or [{}])[0], (new_ipam or [{}])[0]
        if single and isinstance(old_dict, dict) and isinstance(new_dict, dict):
            _compare_mapping(change, f"{where}.ipam", old_dict, new_dict, UNSAFE_IPAM_KEYS)
        else:
            change.add(f"{where}.ipam", unsafe=True)
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
