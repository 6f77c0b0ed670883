"""The bridge plugin's netlink operations through pyroute2, for measurement only.

Same function names and signatures as node_plugin.kernel.netlink (the ones ADD and DEL
call) plus the two tombstone steps of a server's DEL (`host_end`, `bury`), so
bench.netlink_backends can swap them in under the real plugin and time ADD and DEL side
by side. Kept out of the product on purpose: it exists to answer "does pyroute2 cost more
than 10% of fast-path ADD or DEL p50?" (docs/kernel-toolkit.md).

Every request mirrors the hand-written client's: the same message per step (a link get by
name or index, one RTM_NEWLINK per change, a full address dump filtered here), sockets
cached per thread and namespace for the host, opened inside `netns.entered` for the
sandbox, and `groups=0` (no multicast subscription: the fastest pyroute2 socket).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from node_plugin.cni.errors import BRIDGE_CONFLICT, INTERFACE_EXISTS, INTERNAL, CniError
from node_plugin.kernel import netlink, netns, tombstones
from node_plugin.kernel.netlink import IFF_PROMISC, IFF_UP, IPInterface, Link

AF_BRIDGE = 7
_local = threading.local()


def failure(action: str, exc: NetlinkError) -> CniError:
    return CniError(INTERNAL, f"{action}: {exc.args[1] if len(exc.args) > 1 else exc}")


def host_socket() -> IPRoute:
    """The calling thread's pyroute2 socket for its current namespace (reused)."""
    ident = netns.identity()
    cached: tuple[tuple[int, int], IPRoute] | None = getattr(_local, "host", None)
    if cached is not None:
        if cached[0] == ident:
            return cached[1]
        cached[1].close()
    ipr = IPRoute(groups=0)
    _local.host = (ident, ipr)
    return ipr


def close_host_socket() -> None:
    cached: tuple[tuple[int, int], IPRoute] | None = getattr(_local, "host", None)
    if cached is not None:
        cached[1].close()
        _local.host = None


@contextmanager
def sandbox_socket(target: int | str) -> Iterator[IPRoute]:
    with netns.entered(target):
        ipr = IPRoute(groups=0)
        try:
            yield ipr
        finally:
            ipr.close()


def link_of(msg: Any) -> Link:
    flags = int(msg["flags"])
    return Link(
        index=int(msg["index"]),
        name=str(msg.get("IFLA_IFNAME") or ""),
        kind=str(msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""),
        mac=str(msg.get("IFLA_ADDRESS") or ""),
        mtu=int(msg.get("IFLA_MTU") or 0),
        flags=flags,
        master=int(msg.get("IFLA_MASTER") or 0),
        peer_index=int(msg.get("IFLA_LINK") or 0),
        operstate=str(msg.get("IFLA_OPERSTATE") or "UNKNOWN"),
        hairpin=_flag(msg.get_nested("IFLA_PROTINFO", "IFLA_BRPORT_MODE")),
        isolated=_flag(msg.get_nested("IFLA_PROTINFO", "IFLA_BRPORT_ISOLATED")),
        group=int(msg.get("IFLA_GROUP") or 0),
        link_netnsid=msg.get("IFLA_LINK_NETNSID"),
        brport_state=msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_SLAVE_DATA", "IFLA_BRPORT_STATE"),
    )


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _get(ipr: IPRoute, action: str, **match: Any) -> Link | None:
    try:
        (msg,) = ipr.link("get", **match)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise failure(action, exc) from None
    return link_of(msg)


def get(ipr: IPRoute, name: str) -> Link | None:
    return _get(ipr, f"look up link {name}", ifname=name)


def get_index(ipr: IPRoute, index: int) -> Link | None:
    return _get(ipr, f"look up link #{index}", index=index)


def brport(ipr: IPRoute, index: int) -> Link | None:
    try:
        ports = ipr.link("dump", family=AF_BRIDGE)
    except NetlinkError as exc:
        raise failure(f"read bridge port #{index}", exc) from None
    return next((link_of(m) for m in ports if m["index"] == index), None)


def names(ipr: IPRoute) -> set[str]:
    try:
        return {str(m.get("IFLA_IFNAME")) for m in ipr.link("dump")}
    except NetlinkError as exc:
        raise failure("list links", exc) from None


def ensure_bridge(
    ipr: IPRoute, name: str, *, mtu: int, promisc: bool, vlan_filtering: bool
) -> Link:
    br = get(ipr, name)
    if br is None:
        spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            spec["mtu"] = mtu
        if vlan_filtering:
            spec["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise failure(f"create bridge {name}", exc) from None
        br = get(ipr, name)
        if br is None:
            raise CniError(INTERNAL, f"bridge {name} vanished right after creation")
    if br.kind != "bridge":
        raise CniError(BRIDGE_CONFLICT, f"{name!r} already exists but is not a bridge")
    if vlan_filtering:
        try:
            ipr.link("set", index=br.index, kind="bridge", br_vlan_filtering=1)
        except NetlinkError as exc:
            raise failure(f"enable VLAN filtering on {name}", exc) from None
    flags = br.flags
    if (promisc and not br.promisc) or not br.up:
        change = IFF_UP | (IFF_PROMISC if promisc else 0)
        try:
            ipr.link("set", index=br.index, flags=change, change=change)
        except NetlinkError as exc:
            raise failure(f"set {name} up", exc) from None
        flags |= change
    return dataclasses.replace(br, flags=flags)


def create_veth(host: IPRoute, *, sandbox_fd: int, ifname: str, mtu: int, mac: str) -> str:
    for _ in range(8):
        host_name = "veth" + secrets.token_hex(4)
        peer: dict[str, Any] = {"ifname": ifname, "net_ns_fd": sandbox_fd, "address": mac}
        spec: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer}
        if mtu:
            peer["mtu"] = spec["mtu"] = mtu
        try:
            host.link("add", **spec)
            return host_name
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and get(host, host_name) is not None:
                continue
            if exc.code == errno.EEXIST:
                raise CniError(
                    INTERFACE_EXISTS, f"interface {ifname!r} already exists in the sandbox"
                ) from None
            raise failure(f"create veth pair {host_name}/{ifname}", exc) from None
    raise CniError(INTERNAL, "could not find a free host-side veth name")


def create_veth_pair(host: IPRoute, name: str, peer: str, *, mtu: int) -> None:
    try:
        host.link("add", ifname=name, kind="veth", mtu=mtu, peer={"ifname": peer, "mtu": mtu})
    except NetlinkError as exc:
        raise failure(f"create veth pair {name}/{peer}", exc) from None


def delete(ipr: IPRoute, index: int, what: str) -> None:
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
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
    spec: dict[str, Any] = {"index": index}
    if master is not None:
        spec["master"] = master
    if state is not None:
        spec["state"] = state
    if address:
        spec["address"] = address
    try:
        ipr.link("set", **spec)
    except NetlinkError as exc:
        raise failure(action, exc) from None


def set_port(ipr: IPRoute, index: int, *, hairpin: bool, isolated: bool) -> None:
    spec: dict[str, Any] = {"index": index, "mode": 1 if hairpin else 0}
    if isolated:
        spec["isolated"] = 1
    try:
        ipr.brport("set", **spec)
    except NetlinkError as exc:
        raise failure("set bridge port flags (hairpin/isolated)", exc) from None


def addresses(ipr: IPRoute, index: int, family: int | None = None) -> list[IPInterface]:
    try:
        msgs = ipr.addr("dump", family=family or 0)
    except NetlinkError as exc:
        raise failure(f"list addresses of #{index}", exc) from None
    out: list[IPInterface] = []
    for m in msgs:
        if m["index"] != index:
            continue
        raw = m.get("IFA_ADDRESS") if m["family"] == 10 else m.get("IFA_LOCAL")
        iface = ipaddress.ip_interface(f"{raw or m.get('IFA_ADDRESS')}/{m['prefixlen']}")
        if not iface.ip.is_link_local:
            out.append(iface)
    return out


def add_address(ipr: IPRoute, index: int, address: IPInterface, what: str) -> None:
    spec: dict[str, Any] = {
        "index": index,
        "address": str(address.ip),
        "prefixlen": address.network.prefixlen,
    }
    if address.version == 4 and address.network.prefixlen < 31:
        spec["broadcast"] = str(address.network.broadcast_address)
    try:
        ipr.addr("add", **spec)
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
    request: dict[str, Any] = {
        "dst": spec["dst"],
        "oif": spec.get("oif", 0),
        "proto": spec.get("proto", netlink.RTPROT_BOOT),
    }
    for key in ("gateway", "priority", "table", "scope"):
        if spec.get(key):
            request[key] = spec[key]
    if spec.get("metrics"):
        request["metrics"] = dict(spec["metrics"])
    try:
        ipr.route("add", **request)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise failure(f"add route {what}", exc) from None
    return True


# ---- the tombstone steps of a server's DEL (node_plugin.kernel.tombstones) -------------


def host_end(host: IPRoute, sandbox_fd: int, cont: Link) -> Link | None:
    if cont.kind != "veth" or not cont.peer_index:
        return None
    peer = get_index(host, cont.peer_index)
    if peer is None or peer.kind != "veth" or peer.peer_index != cont.index:
        return None
    if peer.link_netnsid is None:
        return None
    try:
        found = host.get_netnsid(fd=sandbox_fd)
    except NetlinkError as exc:
        raise failure("look up the sandbox's namespace id", exc) from None
    sandbox_id = found.get("nsid") if found else None
    return peer if sandbox_id == peer.link_netnsid else None


def bury(
    host: IPRoute,
    sandbox: IPRoute,
    sandbox_fd: int,
    cont: Link,
    *,
    addresses: list[IPInterface],
    owner: str,
) -> bool:
    """tombstones.bury, step for step (the rename retries are left out: names are random)."""
    peer = host_end(host, sandbox_fd, cont)
    if peer is None:
        return False
    steps: list[tuple[IPRoute, dict[str, Any]]] = [
        (host, {"index": peer.index, "group": tombstones.GROUP, "state": "down", "master": 0}),
        (
            host,
            {
                "index": peer.index,
                "ifname": (tombstones.PREFIX + peer.name[4:])[:15],
                "ifalias": f"cniwarden tombstone of {owner}",
            },
        ),
        (sandbox, {"index": cont.index, "state": "down"}),
    ]
    for ipr, spec in steps:
        try:
            ipr.link("set", **spec)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return True
            raise failure(f"retire {peer.name}", exc) from None
    for address in addresses:
        del_address(sandbox, cont.index, address, cont.name)
    try:
        sandbox.link(
            "set",
            index=cont.index,
            ifname=tombstones.PREFIX + secrets.token_hex(4),
            group=tombstones.GROUP,
        )
    except NetlinkError as exc:
        raise failure(f"rename {cont.name} in the sandbox", exc) from None
    return True
