"""Link, address and route operations for the node, through node_plugin.kernel.rtnl
(pyroute2 only for bridge VLAN filters, which rtnl does not speak).

Two users: the bridge plugin (every pod's ADD, CHECK, DEL) and the agent's host-gw
routing (cni_operator.hostgw_node: routes tagged with its own protocol number).
Host-side sockets are cached per thread and per network namespace (a resident
server's worker may serve several "host" namespaces, e.g. in tests); sandbox
sockets are opened by the caller inside `netns.entered(...)` and closed after;
`opened()` is for rare callers. Every kernel error becomes a CniError that says what
was being done.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from node_plugin.cni.errors import BRIDGE_CONFLICT, INTERFACE_EXISTS, INTERNAL, CniError
from node_plugin.kernel import netns
from node_plugin.kernel.rtnl import (
    IFLA_BRPORT_ISOLATED,
    IFLA_BRPORT_MODE,
    IFLA_LINK,
    IFLA_MASTER,
    IFLA_MTU,
    RT_TABLE_MAIN,
    RTN_UNICAST,
    LinkMsg,
    RouteMsg,
    Rtnl,
    RtnlError,
)

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_PROMISC = 0x100
BR_STATE_DISABLED = 0
AF_INET = 2
AF_INET6 = 10
RTPROT_BOOT = 3
_local = threading.local()

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    flags: int
    master: int
    peer_index: int  # IFLA_LINK: a veth's peer index (in the peer's namespace)
    operstate: str
    hairpin: bool | None = None
    isolated: bool | None = None
    group: int = 0
    link_netnsid: int | None = None  # the peer's namespace, when not this one
    brport_state: int | None = None  # STP state of a bridge port (BR_STATE_*), else None

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


IPRoute = Rtnl  # the socket type every function here takes


def failure(action: str, exc: RtnlError) -> CniError:
    return CniError(INTERNAL, f"{action}: {exc.args[1] if len(exc.args) > 1 else exc}")


class _CachedSocket:
    """A thread's host socket; closed when the thread ends (its thread-local is dropped)."""

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.ipr = Rtnl()

    def close(self) -> None:
        try:
            self.ipr.close()
        except Exception as exc:  # never raise from cleanup
            log.debug("closing a cached netlink socket: %s", exc)

    def __del__(self) -> None:
        self.close()


def host_socket() -> IPRoute:
    """The calling thread's socket for its current namespace (reused across requests)."""
    ident = netns.identity()
    cached: _CachedSocket | None = getattr(_local, "host", None)
    if cached is not None:
        if cached.ident == ident:
            return cached.ipr
        cached.close()
    fresh = _CachedSocket(ident)
    _local.host = fresh
    return fresh.ipr


@contextmanager
def opened() -> Iterator[IPRoute]:
    """A socket in the calling thread's namespace, closed after the block: for callers
    that run now and then (the agent), where a cached socket would outlive its thread."""
    try:
        ipr = Rtnl()
    except OSError as exc:
        raise CniError(INTERNAL, f"open a netlink socket: {exc.strerror or exc}") from None
    try:
        yield ipr
    finally:
        ipr.close()


@contextmanager
def sandbox_socket(target: int | str) -> Iterator[IPRoute]:
    """Enter the sandbox (fd or path) on this thread and hand out a socket bound to it."""
    with netns.entered(target):
        ipr = Rtnl()
        try:
            yield ipr
        finally:
            ipr.close()


def link_of(msg: LinkMsg) -> Link:
    return Link(
        index=msg.index,
        name=msg.name,
        kind=msg.kind,
        mac=msg.mac,
        mtu=msg.attr_u32(IFLA_MTU),
        flags=msg.flags,
        master=msg.attr_u32(IFLA_MASTER),
        peer_index=msg.attr_u32(IFLA_LINK),
        operstate=msg.operstate,
        hairpin=msg.brport_flag(IFLA_BRPORT_MODE),
        isolated=msg.brport_flag(IFLA_BRPORT_ISOLATED),
        group=msg.group,
        link_netnsid=msg.link_netnsid,
        brport_state=msg.brport_state,
    )


def get(ipr: IPRoute, name: str) -> Link | None:
    try:
        msg = ipr.get_link(name=name)
    except RtnlError as exc:
        raise failure(f"look up link {name}", exc) from None
    return link_of(msg) if msg is not None else None


def get_index(ipr: IPRoute, index: int) -> Link | None:
    try:
        msg = ipr.get_link(index=index)
    except RtnlError as exc:
        raise failure(f"look up link #{index}", exc) from None
    return link_of(msg) if msg is not None else None


def brport(ipr: IPRoute, index: int) -> Link | None:
    """The link with its bridge-port flags (hairpin, isolated) filled in."""
    try:
        msg = ipr.brport(index)
    except RtnlError as exc:
        raise failure(f"read bridge port #{index}", exc) from None
    return link_of(msg) if msg is not None else None


def names(ipr: IPRoute) -> set[str]:
    """Every link name in the socket's namespace."""
    try:
        return {link.name for link in ipr.links()}
    except RtnlError as exc:
        raise failure("list links", exc) from None


def ensure_bridge(
    ipr: IPRoute, name: str, *, mtu: int, promisc: bool, vlan_filtering: bool
) -> Link:
    """Create the bridge or reuse it; an existing non-bridge of that name is an error."""
    br = get(ipr, name)
    if br is None:
        try:
            ipr.add_bridge(name, mtu=mtu, vlan_filtering=vlan_filtering)
        except RtnlError as exc:
            if exc.code != errno.EEXIST:  # EEXIST: a parallel ADD made it first
                hint = " (this kernel has no bridge VLAN filtering)" if vlan_filtering else ""
                raise failure(f"create bridge {name}{hint}", exc) from None
        br = get(ipr, name)
        if br is None:
            raise CniError(INTERNAL, f"bridge {name} vanished right after creation")
    if br.kind != "bridge":
        raise CniError(
            BRIDGE_CONFLICT,
            f"{name!r} already exists but is not a bridge (it is a {br.kind or 'device'})",
        )
    if vlan_filtering:
        try:
            ipr.set_vlan_filtering(br.index)
        except RtnlError as exc:
            raise failure(f"enable VLAN filtering on {name}", exc) from None
    flags = br.flags
    if (promisc and not br.promisc) or not br.up:
        try:
            ipr.set_link(br.index, up=True, promisc=True if promisc else None)
        except RtnlError as exc:
            raise failure(f"set {name} up", exc) from None
        flags |= IFF_UP | (IFF_PROMISC if promisc else 0)
    return dataclasses.replace(br, flags=flags)


def create_veth(host: IPRoute, *, sandbox_fd: int, ifname: str, mtu: int, mac: str) -> str:
    """A veth pair: `ifname` in the sandbox, `veth<8 hex>` in the host. Returns the host name."""
    for _ in range(8):
        host_name = "veth" + secrets.token_hex(4)
        try:
            host.add_veth(host_name, ifname, peer_netns_fd=sandbox_fd, mtu=mtu, peer_mac=mac)
            return host_name
        except RtnlError as exc:
            if exc.code == errno.EEXIST and get(host, host_name) is not None:
                continue  # our random host-side name collided; the sandbox was checked
            if exc.code == errno.EEXIST:
                raise CniError(
                    INTERFACE_EXISTS, f"interface {ifname!r} already exists in the sandbox"
                ) from None
            raise failure(f"create veth pair {host_name}/{ifname}", exc) from None
    raise CniError(INTERNAL, "could not find a free host-side veth name")


def create_veth_pair(host: IPRoute, name: str, peer: str, *, mtu: int) -> None:
    """A veth pair with both ends in the host (the VLAN gateway's)."""
    try:
        host.add_veth(name, peer, mtu=mtu)
    except RtnlError as exc:
        raise failure(f"create veth pair {name}/{peer}", exc) from None


def delete(ipr: IPRoute, index: int, what: str) -> None:
    try:
        ipr.del_link(index)
    except RtnlError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise failure(f"delete {what}", exc) from None


def set_link(
    ipr: IPRoute,
    action: str,
    *,
    index: int,
    master: int | None = None,
    state: str | None = None,
    address: str = "",
) -> None:
    try:
        ipr.set_link(index, master=master, up=None if state is None else state == "up", mac=address)
    except RtnlError as exc:
        raise failure(action, exc) from None


def set_port(ipr: IPRoute, index: int, *, hairpin: bool, isolated: bool) -> None:
    try:
        ipr.set_brport(index, hairpin=hairpin, isolated=True if isolated else None)
    except RtnlError as exc:
        raise failure("set bridge port flags (hairpin/isolated)", exc) from None


def vlan(ipr: IPRoute, command: str, index: int, vid: int, *, pvid_untagged: bool = False) -> None:
    """Bridge VLAN filter entries: rare, so through pyroute2 (imported only here)."""
    from pyroute2.iproute.linux import IPRoute as PyIPRoute
    from pyroute2.netlink.exceptions import NetlinkError as PyNetlinkError

    info: dict[str, Any] = {"vid": vid}
    if pvid_untagged:
        info["flags"] = ["pvid", "untagged"]
    with PyIPRoute(groups=0) as py:
        try:
            py.vlan_filter(command, index=index, vlan_info=info)
        except PyNetlinkError as exc:
            if command == "del" and exc.code in (errno.ENOENT, errno.EINVAL):
                return
            raise CniError(
                INTERNAL, f"{command} VLAN {vid} on port #{index}: {exc.args[-1]}"
            ) from None


def addresses(ipr: IPRoute, index: int, family: int | None = None) -> list[IPInterface]:
    """Global (non link-local) addresses on a link."""
    try:
        msgs = ipr.addrs(family or 0)
    except RtnlError as exc:
        raise failure(f"list addresses of #{index}", exc) from None
    out: list[IPInterface] = []
    for m in msgs:
        if m.index != index:
            continue
        iface = m.interface
        if iface.ip.is_link_local:
            continue
        out.append(iface)
    return out


def add_address(ipr: IPRoute, index: int, address: IPInterface, what: str) -> None:
    """Add an address; IPv4 gets its broadcast, as iproute2 and the reference set it."""
    broadcast = address.version == 4 and address.network.prefixlen < 31
    try:
        ipr.add_addr(index, address, broadcast=broadcast)
    except RtnlError as exc:
        if exc.code != errno.EEXIST:
            raise failure(f"add address {address} to {what}", exc) from None


def del_address(ipr: IPRoute, index: int, address: IPInterface, what: str) -> None:
    try:
        ipr.del_addr(index, address)
    except RtnlError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
            raise failure(f"remove address {address} from {what}", exc) from None


def add_route(ipr: IPRoute, spec: dict[str, Any], what: str) -> bool:
    """Add a route (protocol "boot", like `ip route add`); False when it exists already."""
    gateway = spec.get("gateway")
    metrics = spec.get("metrics") or {}
    try:
        ipr.add_route(
            ipaddress.ip_network(spec["dst"]),
            oif=spec.get("oif", 0),
            gateway=ipaddress.ip_address(gateway) if gateway else None,
            priority=spec.get("priority", 0),
            table=spec.get("table"),
            scope=spec.get("scope") or 0,
            proto=spec.get("proto", RTPROT_BOOT),
            mtu=metrics.get("mtu", 0),
            advmss=metrics.get("advmss", 0),
        )
    except RtnlError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise failure(f"add route {what}", exc) from None
    return True


def routes(ipr: IPRoute, family: int) -> list[RouteMsg]:
    try:
        return ipr.routes(family)
    except RtnlError as exc:
        raise failure("list routes", exc) from None


def interface_addresses(ipr: IPRoute) -> list[IPInterface]:
    """Every address of every link, link-local and loopback ones left out: the node's own
    addresses and, with their prefixes, its directly connected subnets."""
    try:
        msgs = ipr.addrs()
    except RtnlError as exc:
        raise failure("list addresses", exc) from None
    found = (m.interface for m in msgs)
    return [i for i in found if not (i.ip.is_link_local or i.ip.is_loopback)]


def routes_of_protocol(
    ipr: IPRoute, protocol: int, *, table: int = RT_TABLE_MAIN
) -> list[tuple[IPNetwork, IPAddress | None]]:
    """(destination, gateway) of the unicast routes of both families that `protocol`
    installed in `table`: how an owner finds its routes again, and only its own."""
    found: list[tuple[IPNetwork, IPAddress | None]] = []
    for family in (AF_INET, AF_INET6):
        for route in routes(ipr, family):
            if route.protocol != protocol or route.table != table or route.kind != RTN_UNICAST:
                continue
            destination = ipaddress.ip_network(f"{route.dst or _ANY[family]}/{route.dst_len}")
            gateway = ipaddress.ip_address(route.gateway) if route.gateway else None
            found.append((destination, gateway))
    return found


_ANY = {AF_INET: "0.0.0.0", AF_INET6: "::"}


@dataclass(frozen=True)
class MainRoute:
    """A unicast route of the main table, as much of it as `replace_route` can recreate."""

    destination: IPNetwork
    gateway: IPAddress | None
    oif: int
    protocol: int


def main_route_to(ipr: IPRoute, destination: IPNetwork) -> MainRoute | None:
    """The main table's unicast route to exactly `destination` with metric 0: the one
    `replace_route` overwrites. None when there is none."""
    family = AF_INET if destination.version == 4 else AF_INET6
    for route in routes(ipr, family):
        if route.table != RT_TABLE_MAIN or route.kind != RTN_UNICAST or route.priority:
            continue
        found = ipaddress.ip_network(f"{route.dst or _ANY[family]}/{route.dst_len}")
        if found == destination:
            gateway = ipaddress.ip_address(route.gateway) if route.gateway else None
            return MainRoute(found, gateway, route.oif, route.protocol)
    return None


def replace_route(
    ipr: IPRoute,
    destination: IPNetwork,
    gateway: IPAddress | None,
    *,
    protocol: int,
    oif: int = 0,
) -> None:
    """`ip route replace DESTINATION [via GATEWAY] [dev OIF] proto PROTOCOL` in the main
    table: created, or overwritten whoever owned it (the caller decides which
    destinations it may take)."""
    try:
        ipr.add_route(destination, gateway=gateway, oif=oif, proto=protocol, replace=True)
    except RtnlError as exc:
        raise failure(f"route {destination} via {gateway}", exc) from None


def delete_route(
    ipr: IPRoute, destination: IPNetwork, gateway: IPAddress | None, *, protocol: int
) -> bool:
    """Deletes our route (this gateway, this protocol) from the main table; False when
    there was none, so a route of the same destination with another owner stays."""
    try:
        ipr.del_route(destination, gateway=gateway, table=RT_TABLE_MAIN, proto=protocol)
    except RtnlError as exc:
        if exc.code == errno.ESRCH:
            return False
        raise failure(f"remove route {destination} via {gateway}", exc) from None
    return True
