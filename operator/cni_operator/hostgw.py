"""Host-gw pod networking between nodes: which routes and which masquerade rule a node needs.

The model kind's own CNI (kindnet) and flannel's host-gw backend use: every node's
pods live in that node's `spec.podCIDRs`, so a node reaches another node's pods by
routing that node's pod CIDRs via its InternalIP, which must sit on a directly
connected subnet. Pod traffic that leaves the cluster's pod CIDRs is masqueraded
when a network asks for it (`spec.routing.ipMasq`); pod-to-pod traffic never is,
so pods see each other's real addresses.

Pure: plain values in, a plan and an nft script out. No netlink and no kopf here:
`hostgw_node` applies the plan to the kernel and the agent feeds it Nodes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_operator.api import NetworkSpec

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HOST_GATEWAY = "HostGateway"
# Routes we install carry this protocol number (`ip route ... proto 157`): how the
# agent finds its own routes again after a restart, without a state file, and
# never touches anyone else's.
ROUTE_PROTOCOL = 157
NFT_TABLE = "cniwarden_hostgw"


@dataclass(frozen=True)
class PeerNode:
    """What host-gw needs from a Node object."""

    name: str
    internal_ips: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> PeerNode:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        cidrs = list(spec.get("podCIDRs") or [])
        if not cidrs and spec.get("podCIDR"):
            cidrs = [spec["podCIDR"]]
        ips = [
            str(a.get("address"))
            for a in status.get("addresses") or []
            if a.get("type") == "InternalIP" and a.get("address")
        ]
        return cls(str(meta.get("name", "")), tuple(ips), tuple(str(c) for c in cidrs))


@dataclass(frozen=True, order=True)
class Route:
    destination: str
    gateway: str
    node: str = field(compare=False)


@dataclass(frozen=True)
class Masquerade:
    """Masquerade traffic from `sources` (this node's pod CIDRs) to anything
    outside `cluster` (every pod CIDR of the cluster) and outside multicast."""

    sources: tuple[str, ...]
    cluster: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    routes: tuple[Route, ...] = ()
    masquerade: Masquerade | None = None
    skipped: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    host_gateway: bool = False

    @property
    def empty(self) -> bool:
        return not self.routes and self.masquerade is None


@dataclass(frozen=True)
class RoutingWish:
    """The routing part of one CNINetwork applied on this node."""

    network: str
    host_gateway: bool
    ip_masq: bool
    cluster_cidrs: tuple[str, ...] = ()


def wishes_from_specs(specs: Mapping[str, Mapping[str, Any]]) -> list[RoutingWish]:
    """The routing asked for by the networks applied on this node (their stored specs)."""
    wishes = []
    for name, raw in sorted(specs.items()):
        spec = NetworkSpec.model_validate(dict(raw))
        routing = spec.routing
        if routing is None:
            continue
        wish = RoutingWish(
            network=name,
            host_gateway=routing.mode == HOST_GATEWAY,
            ip_masq=routing.ipMasq,
            cluster_cidrs=tuple(routing.clusterCIDRs),
        )
        if wish.host_gateway or wish.ip_masq:
            wishes.append(wish)
    return wishes


def _network(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _collapse(cidrs: Iterable[IPNetwork]) -> list[IPNetwork]:
    by_family: dict[int, list[Any]] = {}
    for cidr in cidrs:
        by_family.setdefault(cidr.version, []).append(cidr)
    out: list[IPNetwork] = []
    for version in sorted(by_family):
        out += list(ipaddress.collapse_addresses(by_family[version]))
    return out


def plan(
    this_node: str,
    nodes: Iterable[PeerNode],
    wishes: Iterable[RoutingWish],
    local_prefixes: Iterable[str],
    local_addresses: Iterable[str] = (),
) -> Plan:
    """Routes and masquerade for `this_node`.

    `local_prefixes` are the node's directly connected subnets (its interfaces'
    address/prefix): a gateway outside all of them cannot be routed through and
    is reported in `skipped` instead. `local_addresses` are the node's own
    addresses (a peer claiming one of them is misconfigured).
    """
    wishes = list(wishes)
    nodes = sorted(nodes, key=lambda n: n.name)
    if not wishes:
        return Plan()
    me = next((n for n in nodes if n.name == this_node), PeerNode(this_node))
    my_cidrs = [c for c in (_network(t) for t in me.pod_cidrs) if c is not None]
    connected = [p for p in (_network(t) for t in local_prefixes) if p is not None]
    own = {a for a in (_address(t) for t in local_addresses) if a is not None}
    skipped: list[str] = []
    routes: list[Route] = []
    if any(w.host_gateway for w in wishes):
        for peer in nodes:
            if peer.name == this_node:
                continue
            routes += _peer_routes(peer, my_cidrs, connected, own, skipped)
    masquerade = None
    if any(w.ip_masq for w in wishes):
        if not my_cidrs:
            skipped.append(f"ipMasq: node {this_node} has no spec.podCIDRs to masquerade from")
        else:
            declared = [
                c for w in wishes for c in (_network(t) for t in w.cluster_cidrs) if c is not None
            ]
            every_pod_cidr = [
                c for n in nodes for c in (_network(t) for t in n.pod_cidrs) if c is not None
            ]
            cluster = _collapse(declared or every_pod_cidr)
            masquerade = Masquerade(
                sources=tuple(str(c) for c in _collapse(my_cidrs)),
                cluster=tuple(str(c) for c in cluster),
            )
    return Plan(
        routes=tuple(sorted(set(routes))),
        masquerade=masquerade,
        skipped=tuple(skipped),
        networks=tuple(w.network for w in wishes),
        host_gateway=any(w.host_gateway for w in wishes),
    )


def _peer_routes(
    peer: PeerNode,
    my_cidrs: list[IPNetwork],
    connected: list[IPNetwork],
    own: set[IPAddress],
    skipped: list[str],
) -> list[Route]:
    routes = []
    gateways = [a for a in (_address(t) for t in peer.internal_ips) if a is not None]
    for text in peer.pod_cidrs:
        cidr = _network(text)
        if cidr is None:
            skipped.append(f"node {peer.name}: podCIDR {text!r} is not a CIDR")
            continue
        if any(cidr.overlaps(mine) for mine in my_cidrs if mine.version == cidr.version):
            skipped.append(f"node {peer.name}: podCIDR {cidr} overlaps this node's pod CIDR")
            continue
        family = [g for g in gateways if g.version == cidr.version]
        if not family:
            skipped.append(f"node {peer.name}: no IPv{cidr.version} InternalIP to route {cidr} via")
            continue
        onlink = [g for g in family if any(g in p for p in connected) and g not in own]
        if family and all(g in own for g in family):
            skipped.append(
                f"node {peer.name}: InternalIP {family[0]} is this node's own address; "
                f"{cidr} is not routed"
            )
            continue
        if not onlink:
            skipped.append(
                f"node {peer.name}: InternalIP {family[0]} is not on a directly connected "
                f"subnet of this node; {cidr} is not routed (host-gw needs one L2 segment)"
            )
            continue
        routes.append(Route(str(cidr), str(onlink[0]), peer.name))
    return routes


@dataclass(frozen=True)
class RouteChanges:
    add: tuple[Route, ...]
    remove: tuple[tuple[str, str], ...]


def route_changes(current: Iterable[tuple[str, str]], desired: Iterable[Route]) -> RouteChanges:
    """What to replace and what to delete, given our routes now (destination, gateway)."""
    want = {(r.destination, r.gateway): r for r in desired}
    have = set(current)
    add = tuple(r for key, r in sorted(want.items()) if key not in have)
    wanted_destinations = {d for d, _ in want}
    # A route to a destination we still want but via an old gateway is replaced by `add`.
    remove = tuple(sorted(k for k in have if k not in want and k[0] not in wanted_destinations))
    return RouteChanges(add, remove)


# Per family: nft address type, match keyword, the set of cluster CIDRs, multicast.
_NFT_FAMILIES = (
    (4, "ipv4_addr", "ip", "cluster4", "224.0.0.0/4"),
    (6, "ipv6_addr", "ip6", "cluster6", "ff00::/8"),
)


def nft_script(masquerade: Masquerade | None) -> str:
    """One atomic nft transaction: (re)create our table, or remove it when None.

    Creating the table first makes the delete valid whether or not it existed.
    """
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
    if masquerade is None:
        return "\n".join(lines) + "\n"

    def of(version: int, cidrs: tuple[str, ...]) -> list[str]:
        return [c for c in cidrs if ipaddress.ip_network(c).version == version]

    lines.append(f"table inet {NFT_TABLE} {{")
    for version, addr_type, _, set_name, _ in _NFT_FAMILIES:
        if cluster := of(version, masquerade.cluster):
            lines += [
                f"  set {set_name} {{",
                f"    type {addr_type}; flags interval;",
                f"    elements = {{ {', '.join(cluster)} }}",
                "  }",
            ]
    lines += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    comment = 'comment "cniwarden host-gw ipMasq: pod traffic leaving the cluster"'
    for version, _, match, set_name, multicast in _NFT_FAMILIES:
        if sources := of(version, masquerade.sources):
            keep = f"{match} daddr != @{set_name} " if of(version, masquerade.cluster) else ""
            lines.append(
                f"    {match} saddr {{ {', '.join(sources)} }} {keep}{match} daddr != {multicast} "
                f"masquerade {comment}"
            )
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def report(plan_: Plan, applied: bool, error: str | None = None) -> dict[str, Any]:
    """The `podRoutes` section of the node's CNINodeState."""
    out: dict[str, Any] = {
        "mode": HOST_GATEWAY if plan_.host_gateway else "None",
        "networks": list(plan_.networks),
        "routes": [
            {"destination": r.destination, "via": r.gateway, "node": r.node} for r in plan_.routes
        ],
        "masquerade": (
            {"from": list(plan_.masquerade.sources), "exceptTo": list(plan_.masquerade.cluster)}
            if plan_.masquerade
            else None
        ),
        "skipped": list(plan_.skipped),
        "applied": applied,
    }
    if error:
        out["error"] = error
    return out
