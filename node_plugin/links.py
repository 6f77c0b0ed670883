"""Netlink work for the bridge plugin, with pyroute2 (imported only by verbs that need it).

Host-side sockets are cached per thread and per network namespace (a resident
server's worker may serve several "host" namespaces, e.g. in tests); sandbox
sockets are opened by the caller inside `netns.entered(...)` and closed after.
Every kernel error becomes a CniError that says what was being done.
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

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from node_plugin import netns
from node_plugin.errors import BRIDGE_CONFLICT, INTERFACE_EXISTS, INTERNAL, CniError

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_PROMISC = 0x100
AF_INET = 2
AF_INET6 = 10
RTPROT_BOOT = 3
_local = threading.local()

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def failure(action: str, exc: NetlinkError) -> CniError:
    return CniError(INTERNAL, f"{action}: {exc.args[1] if len(exc.args) > 1 else exc}")


class _CachedSocket:
    """A thread's host socket; closed when the thread ends (its thread-local is dropped)."""

    def __init__(self, ident: tuple[int, int]) -> None:
        self.ident = ident
        self.ipr = IPRoute(groups=0)

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
def sandbox_socket(target: int | str) -> Iterator[IPRoute]:
    """Enter the sandbox (fd or path) on this thread and hand out a socket bound to it."""
    with netns.entered(target):
        ipr = IPRoute(groups=0)
        try:
            yield ipr
        finally:
            ipr.close()


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    protinfo = msg.get_attr("IFLA_PROTINFO")
    hairpin = isolated = None
    if protinfo is not None:
        mode = protinfo.get_attr("IFLA_BRPORT_MODE")
        hairpin = bool(mode) if mode is not None else None
        iso = protinfo.get_attr("IFLA_BRPORT_ISOLATED")
        isolated = bool(iso) if iso is not None else None
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        flags=msg["flags"],
        master=msg.get_attr("IFLA_MASTER") or 0,
        peer_index=msg.get_attr("IFLA_LINK") or 0,
        operstate=msg.get_attr("IFLA_OPERSTATE") or "",
        hairpin=hairpin,
        isolated=isolated,
    )


def get(ipr: IPRoute, name: str) -> Link | None:
    try:
        msgs = ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise failure(f"look up link {name}", exc) from None
    return _link(msgs[0])


def get_index(ipr: IPRoute, index: int) -> Link | None:
    try:
        msgs = ipr.link("get", index=index)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise failure(f"look up link #{index}", exc) from None
    return _link(msgs[0])


def brport(ipr: IPRoute, index: int) -> Link | None:
    """The link with its bridge-port flags (hairpin, isolated) filled in."""
    try:
        msgs = ipr.brport("show", index=index)
    except NetlinkError as exc:
        raise failure(f"read bridge port #{index}", exc) from None
    return _link(msgs[0]) if msgs else None


def ensure_bridge(
    ipr: IPRoute, name: str, *, mtu: int, promisc: bool, vlan_filtering: bool
) -> Link:
    """Create the bridge or reuse it; an existing non-bridge of that name is an error."""
    spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
    if mtu:
        spec["mtu"] = mtu
    if vlan_filtering:
        spec["br_vlan_filtering"] = 1
    br = get(ipr, name)
    if br is None:
        try:
            ipr.link("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # EEXIST: created concurrently, fine
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
        _set(
            ipr,
            f"enable VLAN filtering on {name}",
            index=br.index,
            kind="bridge",
            br_vlan_filtering=1,
        )
    flags = br.flags
    if promisc and not br.promisc:
        _set(
            ipr,
            f"set promiscuous mode on {name}",
            index=br.index,
            flags=IFF_PROMISC,
            change=IFF_PROMISC,
        )
        flags |= IFF_PROMISC
    if not br.up:
        _set(ipr, f"set {name} up", index=br.index, state="up")
        flags |= IFF_UP
    return dataclasses.replace(br, flags=flags)


def create_veth(host: IPRoute, *, sandbox_fd: int, ifname: str, mtu: int, mac: str) -> str:
    """A veth pair: `ifname` in the sandbox, `veth<8 hex>` in the host. Returns the host name."""
    for _ in range(8):
        host_name = "veth" + secrets.token_hex(4)
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": sandbox_fd}
        spec: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer}
        if mtu:
            spec["mtu"] = peer["mtu"] = mtu
        if mac:
            peer["address"] = mac
        try:
            host.link("add", **spec)
            return host_name
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and get(host, host_name) is not None:
                continue  # our random host-side name collided; the sandbox was checked
            if exc.code == errno.EEXIST:
                raise CniError(
                    INTERFACE_EXISTS, f"interface {ifname!r} already exists in the sandbox"
                ) from None
            raise failure(f"create veth pair {host_name}/{ifname}", exc) from None
    raise CniError(INTERNAL, "could not find a free host-side veth name")


def delete(ipr: IPRoute, index: int, what: str) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise failure(f"delete {what}", exc) from None


def set_link(ipr: IPRoute, action: str, **spec: Any) -> None:
    _set(ipr, action, **spec)


def _set(ipr: IPRoute, action: str, **spec: Any) -> None:
    try:
        ipr.link("set", **spec)
    except NetlinkError as exc:
        raise failure(action, exc) from None


def set_port(ipr: IPRoute, index: int, *, hairpin: bool, isolated: bool) -> None:
    spec: dict[str, Any] = {"mode": 1 if hairpin else 0}
    if isolated:
        spec["isolated"] = 1
    try:
        ipr.brport("set", index=index, **spec)
    except NetlinkError as exc:
        raise failure("set bridge port flags (hairpin/isolated)", exc) from None


def vlan(ipr: IPRoute, command: str, index: int, vid: int, *, pvid_untagged: bool = False) -> None:
    info: dict[str, Any] = {"vid": vid}
    if pvid_untagged:
        info["flags"] = ["pvid", "untagged"]
    try:
        ipr.vlan_filter(command, index=index, vlan_info=info)
    except NetlinkError as exc:
        if command == "del" and exc.code in (errno.ENOENT, errno.EINVAL):
            return
        raise failure(f"{command} VLAN {vid} on port #{index}", exc) from None


def addresses(ipr: IPRoute, index: int, family: int | None = None) -> list[IPInterface]:
    """Global (non link-local) addresses on a link."""
    kw: dict[str, Any] = {"index": index}
    if family is not None:
        kw["family"] = family
    try:
        msgs = ipr.addr("dump", **kw)
    except NetlinkError as exc:
        raise failure(f"list addresses of #{index}", exc) from None
    out: list[IPInterface] = []
    for m in msgs:
        if m["index"] != index:
            continue
        addr = (
            m.get_attr("IFA_ADDRESS")
            if m["family"] == AF_INET6
            else (m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"))
        )
        iface = ipaddress.ip_interface(f"{addr}/{m['prefixlen']}")
        if iface.ip.is_link_local:
            continue
        out.append(iface)
    return out


def add_address(ipr: IPRoute, index: int, address: IPInterface, what: str) -> None:
    """Add an address; IPv4 gets its broadcast, as iproute2 and the reference set it."""
    spec: dict[str, Any] = {"address": str(address.ip), "prefixlen": address.network.prefixlen}
    if address.version == 4 and address.network.prefixlen < 31:
        spec["broadcast"] = str(address.network.broadcast_address)
    try:
        ipr.addr("add", index=index, **spec)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise failure(f"add address {address} to {what}", exc) from None


def del_address(ipr: IPRoute, index: int, address: IPInterface, what: str) -> None:
    try:
        ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    except NetlinkError as exc:
        if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
            raise failure(f"remove address {address} from {what}", exc) from None


def add_route(ipr: IPRoute, spec: dict[str, Any], what: str) -> bool:
    """Add a route (protocol "boot", like `ip route add`); False when it exists already."""
    spec.setdefault("proto", RTPROT_BOOT)
    try:
        ipr.route("add", **spec)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise failure(f"add route {what}", exc) from None
    return True


def routes(ipr: IPRoute, family: int) -> list[Any]:
    try:
        return list(ipr.route("dump", family=family))
    except NetlinkError as exc:
        raise failure("list routes", exc) from None
