"""Rendering: (CNINetwork spec, Node facts) -> the conflist bytes a node gets.

A pure function, so the controller can check a spec for every node before any
agent writes, and the agent renders the identical bytes.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cni_operator.api import USE_POD_CIDR, NetworkSpec, SpecError, config_file_name
from cni_operator.gojson import go_field

# Keys of a host-local range that only make sense for one concrete subnet.
_FAMILY_BOUND_RANGE_KEYS = ("rangeStart", "rangeEnd", "gateway")


@dataclass(frozen=True)
class NodeFacts:
    """What rendering needs from a Node object."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    pod_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeFacts:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        cidrs = list(spec.get("podCIDRs") or [])
        if not cidrs and spec.get("podCIDR"):
            cidrs = [spec["podCIDR"]]
        return cls(
            name=str(meta.get("name", "")),
            labels=dict(meta.get("labels") or {}),
            pod_cidrs=tuple(str(c) for c in cidrs),
        )


@dataclass(frozen=True)
class RenderedConfig:
    file_name: str
    network: str
    conflist: dict[str, Any]
    content: bytes

    @property
    def plugin_types(self) -> list[str]:
        return referenced_types(self.conflist)


def selects(node_selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Equality-based selection, as a Pod's nodeSelector."""
    return all(labels.get(key) == value for key, value in node_selector.items())


def _expand_pod_cidr_ranges(
    range_sets: Sequence[Any], node: NodeFacts, where: str
) -> list[list[dict[str, Any]]]:
    result: list[list[dict[str, Any]]] = []
    for set_index, range_set in enumerate(range_sets):
        if not isinstance(range_set, list):
            raise SpecError(f"{where}.ranges[{set_index}] must be a list of ranges")
        for index, one in enumerate(range_set):
            if not isinstance(one, dict):
                raise SpecError(f"{where}.ranges[{set_index}][{index}] must be an object")
        uses_pod_cidr = [
            r for r in range_set if isinstance(r, dict) and r.get("subnet") == USE_POD_CIDR
        ]
        if not uses_pod_cidr:
            result.append([dict(r) for r in range_set])
            continue
        if len(range_set) != 1:
            raise SpecError(
                f"{where}.ranges[{set_index}]: a range set with subnet {USE_POD_CIDR} "
                "must hold that single range (it becomes one range set per pod CIDR family)"
            )
        template = range_set[0]
        bound = [k for k in _FAMILY_BOUND_RANGE_KEYS if k in template]
        if bound:
            raise SpecError(
                f"{where}.ranges[{set_index}]: {', '.join(bound)} cannot be combined with "
                f"subnet {USE_POD_CIDR} (the subnet differs per node)"
            )
        if not node.pod_cidrs:
            raise SpecError(
                f"node {node.name} has no spec.podCIDRs, so subnet {USE_POD_CIDR} "
                "cannot be filled in (enable --allocate-node-cidrs or set the subnet)"
            )
        for cidr in _one_per_family(node):
            rendered = dict(template)
            rendered["subnet"] = cidr
            result.append([rendered])
    return result


def _one_per_family(node: NodeFacts) -> list[str]:
    seen: set[int] = set()
    out = []
    for cidr in node.pod_cidrs:
        try:
            family = ipaddress.ip_network(cidr, strict=False).version
        except ValueError:
            raise SpecError(
                f"node {node.name} has spec.podCIDRs entry {cidr!r}, which is not a CIDR"
            ) from None
        if family not in seen:
            seen.add(family)
            out.append(cidr)
    return out


def _render_ipam(ipam: dict[str, Any], node: NodeFacts, where: str) -> dict[str, Any]:
    ipam = copy.deepcopy(ipam)
    if ipam.get("subnet") == USE_POD_CIDR:
        # Legacy single-range form: turn it into `ranges` so it can expand per family.
        legacy = {k: ipam.pop(k) for k in ("subnet", *_FAMILY_BOUND_RANGE_KEYS) if k in ipam}
        more = ipam.get("ranges", [])
        if not isinstance(more, list):
            raise SpecError(f"{where}.ranges must be a list of range sets")
        ipam["ranges"] = [[legacy], *more]
    if "ranges" in ipam:
        if not isinstance(ipam["ranges"], list):
            raise SpecError(f"{where}.ranges must be a list of range sets")
        ipam["ranges"] = _expand_pod_cidr_ranges(ipam["ranges"], node, where)
    return ipam


def render(object_name: str, spec: NetworkSpec, node: NodeFacts) -> RenderedConfig:
    """Render the conflist for one node. Raises SpecError with a fix-oriented message.

    The file is named after the CNINetwork object; the CNI network inside it is
    `spec.networkName` or, by default, the object's name.
    """
    name = spec.cni_name(object_name)
    plugins = []
    for index, source in enumerate(spec.plugins):
        plugin = copy.deepcopy(source)
        if isinstance(plugin.get("ipam"), dict):
            plugin["ipam"] = _render_ipam(plugin["ipam"], node, f"spec.plugins[{index}].ipam")
        plugins.append(plugin)
    conflist: dict[str, Any] = {"cniVersion": spec.cniVersion, "name": name}
    if spec.disableCheck is not None:
        conflist["disableCheck"] = spec.disableCheck
    if spec.disableGC is not None:
        conflist["disableGC"] = spec.disableGC
    conflist["plugins"] = plugins
    content = (json.dumps(conflist, indent=2) + "\n").encode()
    return RenderedConfig(
        file_name=config_file_name(spec.priority, object_name),
        network=name,
        conflist=conflist,
        content=content,
    )


def referenced_types(config: Mapping[str, Any]) -> list[str]:
    """Every binary a config makes the runtime exec: plugin types and IPAM delegates,
    with the keys read as the runtime reads them (Go's rule, see gojson)."""
    plugins = go_field(config, "plugins")
    if not isinstance(plugins, list):
        plugins = [config]
    types: list[str] = []
    for plugin in plugins:
        if not isinstance(plugin, dict):
            continue
        ipam = go_field(plugin, "ipam")
        ipam_type = go_field(ipam, "type") if isinstance(ipam, dict) else None
        for candidate in (go_field(plugin, "type"), ipam_type):
            if isinstance(candidate, str) and candidate and candidate not in types:
                types.append(candidate)
    return types


def check_against_binaries(
    rendered: RenderedConfig, supported_versions: Mapping[str, Sequence[str] | None]
) -> list[str]:
    """Problems that would make the runtime fail this config on this node.

    `supported_versions` maps a binary present in the bin dir to the versions its
    VERSION command lists (None when it could not be asked). A missing key means
    the binary is absent.
    """
    problems = []
    version = str(rendered.conflist.get("cniVersion"))
    for kind in rendered.plugin_types:
        if kind not in supported_versions:
            problems.append(f"plugin binary {kind!r} is not installed in the CNI bin dir")
            continue
        versions = supported_versions[kind]
        if versions is None:
            problems.append(f"plugin binary {kind!r} did not answer the CNI VERSION command")
        elif version not in versions:
            problems.append(
                f"plugin binary {kind!r} supports CNI versions {', '.join(versions)} "
                f"but the config asks for {version}"
            )
    return problems
