"""Host-gw pod networking between nodes: which routes and which masquerade rule a node needs.

The model kind's own CNI (kindnet) and flannel's host-gw backend use: every node's
pods live in that node's `spec.podCIDRs`, so a node reaches another node's pods by
routing that node's pod CIDRs via its InternalIP, which must sit on a directly
connected subnet. Pod traffic that leaves the cluster's pod CIDRs is masqueraded
when a network asks for it (`spec.routing.ipMasq`); pod-to-pod traffic never is,
so pods see each other's real addresses.

A Node's podCIDRs are a claim, not a fact: whoever can write a Node could otherwise pull
any traffic (`128.0.0.0/1`, the node network, another node's pods) to it. So a peer's pod
CIDR is routed only when it lies inside the network's `routing.clusterCIDRs` (required
with HostGateway: the cluster's own configuration is not readable through the API), and
overlaps neither this node's pod CIDR, nor another Node's, nor a subnet this node is
directly connected to. Node IPAM never hands out overlapping ranges, so an overlap means
a Node lies, and which one cannot be told from the objects: every claimant is refused.
Each refusal is a `Refusal` naming the Node, for the node report and an Event.

Pure: plain values in, a plan and an nft script out. No netlink and no kopf here:
`hostgw_node` applies the plan to the kernel and the agent feeds it Nodes.
"""

from __future__ import annotations

import ipaddress
import json
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
    uid: str = ""  # for an Event about the Node

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
        return cls(
            str(meta.get("name", "")),
            tuple(ips),
            tuple(str(c) for c in cidrs),
            str(meta.get("uid") or ""),
        )


@dataclass(frozen=True, order=True)
class Route:
    destination: str
    gateway: str
    node: str = field(compare=False)


@dataclass(frozen=True, order=True)
class Refusal:
    """A peer's pod CIDR that is not routed, and why (the reason names the CIDR)."""

    node: str
    cidr: str
    reason: str

    @property
    def message(self) -> str:
        return f"node {self.node}: {self.reason}"


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
    skipped: tuple[str, ...] = ()  # every refusal's message, then what else was left out
    networks: tuple[str, ...] = ()
    host_gateway: bool = False
    refused: tuple[Refusal, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to install in the kernel."""
        return not self.routes and self.masquerade is None

    @property
    def silent(self) -> bool:
        """Nothing to install and nothing to report."""
        return self.empty and not self.skipped


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
    address/prefix): a peer CIDR overlapping one is refused, and a gateway outside
    all of them cannot be routed through. `local_addresses` are the node's own
    addresses (a peer claiming one of them is misconfigured). Everything not routed
    is in `refused` (per Node and CIDR) and `skipped` (as text).
    """
    wishes = list(wishes)
    nodes = sorted(nodes, key=lambda n: n.name)
    if not wishes:
        return Plan()
    me = next((n for n in nodes if n.name == this_node), PeerNode(this_node))
    my_cidrs = _networks(me.pod_cidrs)
    connected = [p for p in (_network(t) for t in local_prefixes) if p is not None]
    own = {a for a in (_address(t) for t in local_addresses) if a is not None}
    skipped: list[str] = []
    refused: list[Refusal] = []
    routes: list[Route] = []
    gateway_wishes = [w for w in wishes if w.host_gateway]
    if gateway_wishes:
        for wish in gateway_wishes:
            if not wish.cluster_cidrs:
                skipped.append(
                    f"network {wish.network}: HostGateway routes only pod CIDRs inside "
                    "routing.clusterCIDRs, and it declares none"
                )
        allowed = _networks(c for w in gateway_wishes for c in w.cluster_cidrs)
        # Competing claims: other Nodes' pod CIDRs that could be routed (inside the cluster's
        # CIDRs); a claim outside them is refused on its own and takes nobody's route.
        others = {
            n.name: [c for c in _networks(n.pod_cidrs) if any(_within(c, a) for a in allowed)]
            for n in nodes
            if n.name != this_node
        }
        claims = Claims(allowed, my_cidrs, connected, others)
        for peer in nodes:
            if peer.name == this_node:
                continue
            routes += _peer_routes(peer, claims, connected, own, refused)
    masquerade = None
    if any(w.ip_masq for w in wishes):
        if not my_cidrs:
            skipped.append(f"ipMasq: node {this_node} has no spec.podCIDRs to masquerade from")
        else:
            declared = _networks(c for w in wishes for c in w.cluster_cidrs)
            every_pod_cidr = _networks(c for n in nodes for c in n.pod_cidrs)
            cluster = _collapse(declared or every_pod_cidr)
            masquerade = Masquerade(
                sources=tuple(str(c) for c in _collapse(my_cidrs)),
                cluster=tuple(str(c) for c in cluster),
            )
    return Plan(
        routes=tuple(sorted(set(routes))),
        masquerade=masquerade,
        skipped=tuple(r.message for r in refused) + tuple(skipped),
        networks=tuple(w.network for w in wishes),
        host_gateway=bool(gateway_wishes),
        refused=tuple(refused),
    )


def _networks(texts: Iterable[str]) -> list[IPNetwork]:
    return [c for c in (_network(t) for t in texts) if c is not None]


@dataclass(frozen=True)
class Claims:
    """What a peer's pod CIDR is judged against."""

    allowed: list[IPNetwork]  # the routed networks' clusterCIDRs
    mine: list[IPNetwork]  # this node's pod CIDRs
    connected: list[IPNetwork]  # this node's directly connected subnets
    others: dict[str, list[IPNetwork]]  # every other Node's pod CIDRs, by name

    def refusal(self, peer: str, cidr: IPNetwork) -> str | None:
        """Why `peer` may not have `cidr` routed to it; None when it may."""
        if not any(_within(cidr, allowed) for allowed in self.allowed):
            declared = ", ".join(str(a) for a in self.allowed) or "none declared"
            return f"podCIDR {cidr} is outside the network's routing.clusterCIDRs ({declared})"
        for mine in self.mine:
            if _overlap(cidr, mine):
                return f"podCIDR {cidr} overlaps this node's pod CIDR {mine}"
        for other, theirs in sorted(self.others.items()):
            for their in theirs:
                if other != peer and _overlap(cidr, their):
                    return f"podCIDR {cidr} overlaps node {other}'s podCIDR {their}"
        for prefix in self.connected:
            if _overlap(cidr, prefix):
                return f"podCIDR {cidr} overlaps {prefix}, a directly connected subnet of this node"
        return None


def _overlap(a: IPNetwork, b: IPNetwork) -> bool:
    return a.version == b.version and a.overlaps(b)


def _within(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _peer_routes(
    peer: PeerNode,
    claims: Claims,
    connected: list[IPNetwork],
    own: set[IPAddress],
    refused: list[Refusal],
) -> list[Route]:
    routes = []
    gateways = [a for a in (_address(t) for t in peer.internal_ips) if a is not None]
    for text in dict.fromkeys(peer.pod_cidrs):

        def refuse(reason: str, cidr_text: str = text) -> None:
            refused.append(Refusal(peer.name, cidr_text, reason))

        cidr = _network(text)
        if cidr is None:
            refuse(f"podCIDR {text!r} is not a CIDR")
            continue
        reason = claims.refusal(peer.name, cidr)
        if reason is not None:
            refuse(reason, str(cidr))
            continue
        family = [g for g in gateways if g.version == cidr.version]
        if not family:
            refuse(f"no IPv{cidr.version} InternalIP to route {cidr} via", str(cidr))
            continue
        onlink = [g for g in family if any(g in p for p in connected) and g not in own]
        if all(g in own for g in family):
            refuse(
                f"InternalIP {family[0]} is this node's own address; {cidr} is not routed",
                str(cidr),
            )
            continue
        if not onlink:
            refuse(
                f"InternalIP {family[0]} is not on a directly connected subnet of this node; "
                f"{cidr} is not routed (host-gw needs one L2 segment)",
                str(cidr),
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
        "refused": [{"node": r.node, "podCIDR": r.cidr, "reason": r.reason} for r in plan_.refused],
        "applied": applied,
    }
    if error:
        out["error"] = error
    return out


@dataclass(frozen=True)
class DisplacedRoute:
    """Another owner's route (a static `ip route`, the old CNI's daemon) that one of
    ours overwrote: the main table's metric-0 route to the same destination. Kept in
    a journal on the node and put back when our route to that destination goes, so a
    network that leaves a node (a migration rolled back, a CNINetwork deleted) leaves
    the node's routing as it found it, as quarantine does for files."""

    destination: str
    gateway: str | None
    oif: int  # the link index it named (0: none); dropped when the link is gone
    protocol: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "gateway": self.gateway,
            "oif": self.oif,
            "protocol": self.protocol,
        }


class DisplacedJournalError(ValueError):
    """The journal of displaced routes exists but cannot be read."""


def displaced_json(routes: Mapping[str, DisplacedRoute]) -> bytes:
    entries = [routes[key].to_dict() for key in sorted(routes)]
    return (json.dumps({"version": 1, "routes": entries}, indent=2) + "\n").encode()


def parse_displaced(raw: bytes) -> dict[str, DisplacedRoute]:
    """The journal's routes by destination; a clear error for anything else (the
    caller then leaves the journal alone and restores nothing)."""
    try:
        doc = json.loads(raw)
    except ValueError as error:
        raise DisplacedJournalError(f"not JSON: {error}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise DisplacedJournalError("not a version 1 journal object")
    entries = doc.get("routes")
    if not isinstance(entries, list):
        raise DisplacedJournalError("'routes' is not a list")
    out: dict[str, DisplacedRoute] = {}
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise TypeError("not an object")
            destination, gateway = entry["destination"], entry.get("gateway")
            if not isinstance(destination, str) or not isinstance(gateway, str | None):
                raise TypeError("destination and gateway must be strings")
            destination = str(ipaddress.ip_network(destination))
            if gateway is not None:
                gateway = str(ipaddress.ip_address(gateway))
            oif, protocol = entry.get("oif", 0), entry["protocol"]
            if any(not isinstance(n, int) or isinstance(n, bool) for n in (oif, protocol)):
                raise TypeError("oif and protocol must be integers")
            if not (0 <= oif < 2**32 and 0 <= protocol < 256) or protocol == ROUTE_PROTOCOL:
                raise ValueError(f"oif {oif} or protocol {protocol} out of range")
        except (KeyError, TypeError, ValueError) as error:
            raise DisplacedJournalError(f"routes[{index}]: {error}") from None
        out[destination] = DisplacedRoute(destination, gateway, oif, protocol)
    return out
