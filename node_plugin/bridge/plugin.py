"""cniwarden-bridge: the reference `bridge` plugin's network, plus GC/STATUS and no leaks.

ADD is a transaction: every step that changes the node registers its undo, and
a failure anywhere (IPAM, addresses, masquerade...) runs them in reverse, so a
failed ADD leaves no address reserved, no veth and no rule. DEL keeps going past
missing pieces (netns, interface, prevResult) and still releases the address.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node_plugin.bridge import announce, masq, spoofcheck
from node_plugin.bridge import config as bridge_config
from node_plugin.bridge.config import BridgeConfig
from node_plugin.cni.errors import (
    BRIDGE_CONFLICT,
    CHECK_FAILED,
    INTERNAL,
    INVALID_CONFIG,
    CniError,
)
from node_plugin.cni.result import Interface, Result, Route
from node_plugin.cni.skel import CmdArgs
from node_plugin.ipam import invoke as ipam
from node_plugin.ipam.config import IpamConfig
from node_plugin.kernel import netlink, netns, sysctl, tombstones

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
DEFAULT_DST = {4: ipaddress.ip_interface("0.0.0.0/0"), 6: ipaddress.ip_interface("::/0")}
FAMILY = {4: netlink.AF_INET, 6: netlink.AF_INET6}


def load(args: CmdArgs) -> BridgeConfig:
    ipam_type = (
        args.config.get("ipam", {}).get("type")
        if isinstance(args.config.get("ipam"), dict)
        else None
    )
    extra = ("IP",) if ipam_type == ipam.IN_PROCESS else ()
    return bridge_config.load(args.config, args.args, extra)


# --------------------------------------------------------------------------- ADD


@dataclass
class Undo:
    steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def push(self, what: str, step: Callable[[], None]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        for what, step in reversed(self.steps):
            try:
                step()
            except Exception as exc:
                log.warning("rollback: %s failed: %s", what, exc)


def add(args: CmdArgs) -> Result:
    conf = load(args)
    prev = _prev_result(args)
    ipam_conf = ipam.preload(args, conf.ipam_type) if conf.ipam_type else None
    sandbox_fd = netns.open_netns(args.netns)
    undo = Undo()
    try:
        result = _add(args, conf, sandbox_fd, undo, ipam_conf)
    except BaseException:
        undo.run()
        raise
    finally:
        os.close(sandbox_fd)
    return _chain(prev, result) if prev is not None else result


def _add(
    args: CmdArgs, conf: BridgeConfig, sandbox_fd: int, undo: Undo, ipam_conf: IpamConfig | None
) -> Result:
    raw = conf.raw
    host = netlink.host_socket()
    br = netlink.ensure_bridge(
        host,
        conf.bridge,
        mtu=raw.mtu,
        promisc=raw.promisc_mode,
        vlan_filtering=conf.vlan_filtering,
    )
    sysctl.write_quietly(f"net/ipv6/conf/{conf.bridge}/accept_ra", "0")

    cont_mac = conf.mac or random_mac()
    host_name = netlink.create_veth(
        host, sandbox_fd=sandbox_fd, ifname=args.ifname, mtu=raw.mtu, mac=cont_mac
    )
    undo.push(f"delete veth {host_name}", lambda: _delete_by_name(host_name))
    hv = netlink.get(host, host_name)
    if hv is None:
        raise CniError(INTERNAL, f"host veth {host_name} vanished after creation")
    netlink.set_link(
        host,
        f"attach {host_name} to bridge {conf.bridge}",
        index=hv.index,
        master=br.index,
        state="up",
    )
    netlink.set_port(host, hv.index, hairpin=raw.hairpin_mode, isolated=raw.port_isolation)
    _setup_vlans(host, hv.index, conf)

    if raw.macspoofchk:
        spoofcheck.setup(host_name, cont_mac, args.container_id, args.ifname)
        undo.push(
            "macspoofchk teardown", lambda: spoofcheck.teardown(args.container_id, args.ifname)
        )

    result = Result(
        interfaces=[
            Interface(br.name, mac=br.mac),
            Interface(host_name, mac=hv.mac, mtu=hv.mtu),
            Interface(args.ifname, mac=cont_mac, mtu=hv.mtu, sandbox=args.netns),
        ]
    )

    if conf.ipam_type:
        if ipam_conf is None:
            # A delegate may need the link up (dhcp talks on it), as the reference leaves it.
            _set_container_up(sandbox_fd, args.ifname)
        ipam_result = ipam.add(args, conf.ipam_type, ipam_conf)
        undo.push("IPAM release", lambda: ipam.delete(args, conf.ipam_type))
        if not ipam_result.ips:
            raise CniError(INTERNAL, f"IPAM plugin {conf.ipam_type} returned no IP addresses")
        result.ips = ipam_result.ips
        result.routes = ipam_result.routes
        result.dns = ipam_result.dns
        gateways = _gateways(result, conf)
        _configure_sandbox(sandbox_fd, args.ifname, result, conf)
        if conf.is_gateway:
            _setup_gateways(host, br, conf, gateways, result)
        if raw.ip_masq:
            backend = masq.choose_backend(raw.ip_masq_backend)
            addrs = [ip.address for ip in result.ips]
            undo.push(
                "ipMasq teardown",
                lambda: masq.teardown(
                    conf.name, args.ifname, args.container_id, {a.version for a in addrs}
                ),
            )
            masq.setup(backend, conf.name, args.ifname, args.container_id, addrs)
    elif not raw.disable_container_interface:
        _set_container_up(sandbox_fd, args.ifname)

    # The host veth's and the bridge's MAC may change as ports come and go: report now.
    hv_now = _wait_port_up(host, hv.index, host_name, raw.disable_container_interface)
    if result.ips:
        # Only now can the frames cross the bridge: tell neighbours that cached the MAC of
        # a previous holder of these addresses.
        with netns.entered(sandbox_fd):
            announce.announce(args.ifname, cont_mac, [ip.address.ip for ip in result.ips])
    result.interfaces[1].mac = hv_now.mac
    br_now = netlink.get_index(host, br.index)
    if br_now is not None:
        result.interfaces[0].mac = br_now.mac
    if conf.dns.is_set():
        result.dns = conf.dns
    return result


def _set_container_up(sandbox_fd: int, ifname: str) -> None:
    with netlink.sandbox_socket(sandbox_fd) as sb:
        link = netlink.get(sb, ifname)
        if link is None:
            raise CniError(INTERNAL, f"{ifname} vanished from the sandbox")
        netlink.set_link(sb, f"set {ifname} up", index=link.index, state="up")


def random_mac() -> str:
    """A random locally administered unicast MAC, as the kernel would pick for a veth."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _delete_by_name(name: str) -> None:
    host = netlink.host_socket()
    link = netlink.get(host, name)
    if link is not None:
        netlink.delete(host, link.index, name)


def _setup_vlans(host: netlink.IPRoute, index: int, conf: BridgeConfig) -> None:
    raw = conf.raw
    if (raw.vlan or conf.vlans) and not raw.preserve_default_vlan:
        netlink.vlan(host, "del", index, 1)
    if raw.vlan:
        netlink.vlan(host, "add", index, raw.vlan, pvid_untagged=True)
    for vid in conf.vlans:
        netlink.vlan(host, "add", index, vid)


@dataclass
class Gateway:
    address: IPInterface  # gateway IP with the container's prefix length


def _gateways(result: Result, conf: BridgeConfig) -> list[Gateway]:
    """Fill gateways, add default routes (no duplicates), list addresses for the bridge."""
    out: list[Gateway] = []
    default_done: set[int] = set()
    for ip in result.ips:
        ip.interface = 2
        family = ip.family
        if ip.gateway is None and conf.is_gateway:
            ip.gateway = ip.address.network.network_address + 1
        if conf.raw.is_default_gateway and family not in default_done:
            existing = [r for r in result.routes if r.family == family and r.is_default]
            if existing:
                # IPAM already routes by default; give it our gateway if it has none,
                # rather than installing the same default route twice ("file exists").
                for r in existing:
                    if r.gw is None:
                        r.gw = ip.gateway
            else:
                result.routes.append(Route(dst=DEFAULT_DST[family], gw=ip.gateway))
            default_done.add(family)
        if conf.is_gateway and ip.gateway is not None:
            out.append(
                Gateway(ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}"))
            )
    return out


def _configure_sandbox(sandbox_fd: int, ifname: str, result: Result, conf: BridgeConfig) -> None:
    with netlink.sandbox_socket(sandbox_fd) as sb:
        link = netlink.get(sb, ifname)
        if link is None:
            raise CniError(INTERNAL, f"{ifname} vanished from the sandbox")
        if any(ip.family == 6 for ip in result.ips):
            sysctl.write_quietly(f"net/ipv6/conf/{ifname}/disable_ipv6", "0")
            if conf.raw.enabledad:
                sysctl.write_quietly(f"net/ipv6/conf/{ifname}/enhanced_dad", "1")
                sysctl.write_quietly(f"net/ipv6/conf/{ifname}/accept_dad", "1")
            else:
                sysctl.write_quietly(f"net/ipv6/conf/{ifname}/accept_dad", "0")
        sysctl.write_quietly(f"net/ipv4/conf/{ifname}/arp_notify", "1")
        if any(ip.family == 6 for ip in result.ips):
            # An address still tentative when ADD announces (enabledad) is announced by
            # the kernel once DAD completes.
            sysctl.write_quietly(f"net/ipv6/conf/{ifname}/ndisc_notify", "1")
        netlink.set_link(sb, f"set {ifname} up", index=link.index, state="up")
        for ip in result.ips:
            netlink.add_address(sb, link.index, ip.address, ifname)
        default_gw: dict[int, IPAddress] = {}
        for ip in result.ips:
            if ip.gateway is not None:
                default_gw.setdefault(ip.family, ip.gateway)
        for r in result.routes:
            gw = r.gw if r.gw is not None else default_gw.get(r.family)
            spec: dict[str, Any] = {"dst": str(r.dst.network), "oif": link.index}
            if gw is not None:
                spec["gateway"] = str(gw)
            if r.priority:
                spec["priority"] = r.priority
            if r.table is not None:
                spec["table"] = r.table
            if r.scope is not None:
                spec["scope"] = r.scope
            metrics = {k: v for k, v in (("mtu", r.mtu), ("advmss", r.advmss)) if v}
            if metrics:
                spec["metrics"] = metrics
            netlink.add_route(sb, spec, f"{r.dst.network} via {gw} dev {ifname}")


def _setup_gateways(
    host: netlink.IPRoute,
    br: netlink.Link,
    conf: BridgeConfig,
    gateways: list[Gateway],
    result: Result,
) -> None:
    target = br
    if conf.raw.vlan:
        target = _ensure_vlan_gateway(host, br, conf)
        result.interfaces.append(Interface(target.name, mac=target.mac))
    for family in (4, 6):
        fam = [g for g in gateways if g.address.version == family]
        for g in fam:
            _ensure_addr(host, target, g.address, conf.raw.force_address)
        if fam:
            key = "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding"
            sysctl.write(key, "1")


def _ensure_addr(host: netlink.IPRoute, link: netlink.Link, want: IPInterface, force: bool) -> None:
    """The reference's rule: one IPv4 address per bridge, IPv6 ones unless they overlap."""
    have = netlink.addresses(host, link.index, FAMILY[want.version])
    if want in have:
        return
    for a in have:
        if want.version == 4 or a.network.overlaps(want.network):
            if not force:
                raise CniError(
                    BRIDGE_CONFLICT,
                    f"{link.name!r} already has an IP address ({a}) different from {want}",
                    "set forceAddress to replace it",
                )
            netlink.del_address(host, link.index, a, link.name)
    netlink.add_address(host, link.index, want, link.name)
    # Pin the bridge's MAC; otherwise it follows the lowest port MAC as ports churn. Read it
    # now: a bridge whose last port left has the all-zero MAC until a port joins again.
    now = netlink.get_index(host, link.index)
    if now is not None and now.mac and now.mac != "00:00:00:00:00:00":
        netlink.set_link(host, f"pin MAC of {link.name}", index=link.index, address=now.mac)


def _ensure_vlan_gateway(
    host: netlink.IPRoute, br: netlink.Link, conf: BridgeConfig
) -> netlink.Link:
    name = f"{conf.bridge}.{conf.raw.vlan}"
    existing = netlink.get(host, name)
    if existing is not None:
        return existing
    peer = "veth" + secrets.token_hex(4)
    netlink.create_veth_pair(host, peer, name, mtu=br.mtu)
    p = netlink.get(host, peer)
    gw = netlink.get(host, name)
    if p is None or gw is None:
        raise CniError(INTERNAL, f"VLAN gateway {name} vanished")
    netlink.set_link(host, f"attach {peer}", index=p.index, master=br.index, state="up")
    netlink.set_port(host, p.index, hairpin=False, isolated=False)
    if not conf.raw.preserve_default_vlan:
        netlink.vlan(host, "del", p.index, 1)
    netlink.vlan(host, "add", p.index, conf.raw.vlan, pvid_untagged=True)
    netlink.set_link(host, f"set {name} up", index=gw.index, state="up")
    refreshed = netlink.get(host, name)
    assert refreshed is not None
    return refreshed


def _wait_port_up(
    host: netlink.IPRoute, index: int, name: str, container_down: bool, timeout: float = 2.5
) -> netlink.Link:
    """Like the reference: do not report success while the bridge port is not up."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        link = netlink.get_index(host, index)
        if link is None:
            raise CniError(INTERNAL, f"host veth {name} vanished")
        if container_down:
            return link
        # operstate and the port's leaving the disabled state come from one link event;
        # wait for both, so that frames sent next cross the bridge.
        if link.operstate == "UP" and link.brport_state != netlink.BR_STATE_DISABLED:
            return link
        if time.monotonic() > deadline:
            raise CniError(INTERNAL, f"bridge port {name} in error state: {link.operstate}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _chain(prev: Result, ours: Result) -> Result:
    """Chained after another plugin: keep its result and append ours (indices shifted)."""
    offset = len(prev.interfaces)
    for ip in ours.ips:
        if ip.interface is not None:
            ip.interface += offset
    return Result(
        interfaces=prev.interfaces + ours.interfaces,
        ips=prev.ips + ours.ips,
        routes=prev.routes + ours.routes,
        dns=ours.dns if ours.dns.is_set() else prev.dns,
    )


def _prev_result(args: CmdArgs) -> Result | None:
    raw = args.config.get("prevResult")
    if raw is None:
        return None
    return Result.from_json(raw, args.version)


# --------------------------------------------------------------------------- DEL


def delete(args: CmdArgs) -> None:
    """Detach, release, remove rules; the veth pair is unregistered before the answer, or,
    in the resident server (args.reaper), buried and unregistered right after it."""
    conf = load(args)
    errors: list[CniError] = []
    families: set[int] = set()
    sandbox_fd = _open_sandbox_if_any(args.netns)
    if sandbox_fd is not None:
        try:
            families, buried = _remove_container_link(args, sandbox_fd)
            if buried and args.reaper is not None:
                args.reaper.schedule()  # it runs while the lease and rules are released
        except CniError as err:
            errors.append(err)
        finally:
            os.close(sandbox_fd)
    if conf.ipam_type:
        try:
            ipam.delete(args, conf.ipam_type)
        except CniError as err:
            errors.append(err)
    if conf.raw.macspoofchk:
        try:
            spoofcheck.teardown(args.container_id, args.ifname)
        except CniError as err:
            errors.append(err)
    if conf.ipam_type and conf.raw.ip_masq:
        try:
            masq.teardown(conf.name, args.ifname, args.container_id, families or {4, 6})
        except CniError as err:
            errors.append(err)
    if errors:
        first = errors[0]
        rest = "; ".join(e.msg for e in errors[1:])
        raise CniError(first.code, first.msg, "; ".join(x for x in (first.details, rest) if x))


def _open_sandbox_if_any(path: str) -> int | None:
    """The sandbox's netns fd; None when there is none (DEL has no link to remove then)."""
    if not path:
        return None
    try:
        return netns.open_netns(path)
    except CniError:  # missing, or not a network namespace
        return None


def _remove_container_link(args: CmdArgs, sandbox_fd: int) -> tuple[set[int], bool]:
    """Takes CNI_IFNAME out of the sandbox: its address families, and whether the pair
    was buried for the reaper (False: deleted here, or there was nothing to remove)."""
    # Opened in the host namespace before entering the sandbox: sockets stay where opened.
    host = netlink.host_socket() if args.reaper is not None else None
    with netlink.sandbox_socket(sandbox_fd) as sb:
        link = netlink.get(sb, args.ifname)
        if link is None:
            return set(), False
        addresses = netlink.addresses(sb, link.index)
        families: set[int] = {a.version for a in addresses}
        owner = f"{args.container_id}/{args.ifname}"
        if host is not None and tombstones.bury(
            host, sb, sandbox_fd, link, addresses=addresses, owner=owner
        ):
            return families, True
        netlink.delete(sb, link.index, f"{args.ifname} in the sandbox")
        return families, False


# --------------------------------------------------------------------------- CHECK


def check(args: CmdArgs) -> None:
    conf = load(args)
    if "prevResult" not in args.config:
        raise CniError(INVALID_CONFIG, "invalid network config: prevResult: required for CHECK")
    prev = _prev_result(args)
    assert prev is not None
    if conf.ipam_type:
        ipam.check(args, conf.ipam_type)

    br_if = next((i for i in prev.interfaces if i.name == conf.bridge), None)
    cont_if = next(
        (i for i in prev.interfaces if i.name == args.ifname and i.sandbox == args.netns), None
    )
    if br_if is None:
        raise _check(f"prevResult has no interface for bridge {conf.bridge}")
    if cont_if is None:
        raise _check(f"prevResult has no interface {args.ifname} in sandbox {args.netns}")
    host = netlink.host_socket()
    br = netlink.get(host, conf.bridge)
    if br is None or br.kind != "bridge":
        raise _check(
            f"bridge {conf.bridge} not found" if br is None else f"{conf.bridge} is not a bridge"
        )
    # Only a gateway bridge has its MAC pinned; otherwise it follows the lowest port MAC
    # and changes whenever containers come and go (the reference fails CHECK then).
    if conf.is_gateway and br_if.mac and br_if.mac != br.mac:
        raise _check(f"bridge {conf.bridge} MAC {br.mac} does not match prevResult {br_if.mac}")
    if br.promisc != conf.raw.promisc_mode:
        raise _check(
            f"bridge {conf.bridge} promiscuous mode is {br.promisc}, "
            f"config says {conf.raw.promisc_mode}"
        )

    with netlink.sandbox_socket(args.netns) as sb:
        cont = netlink.get(sb, args.ifname)
        if cont is None:
            raise _check(f"interface {args.ifname} not found in {args.netns}")
        if cont.kind != "veth":
            raise _check(f"interface {args.ifname} is a {cont.kind or 'device'}, not a veth")
        if cont_if.mac and cont_if.mac != cont.mac:
            raise _check(f"{args.ifname} MAC {cont.mac} does not match prevResult {cont_if.mac}")
        have = set(netlink.addresses(sb, cont.index))
        cont_pos = prev.interfaces.index(cont_if)
        for ip in prev.ips:
            if ip.interface == cont_pos and ip.address not in have:
                raise _check(f"address {ip.address} not found on {args.ifname}")
        _check_routes(sb, prev)

    found = False
    for i in prev.interfaces:
        if i is br_if or i is cont_if or i.sandbox:
            continue
        hv = netlink.get(host, i.name)
        if hv is None or hv.kind != "veth":
            continue
        if hv.index == cont.peer_index and hv.peer_index == cont.index and hv.master == br.index:
            if i.mac and i.mac != hv.mac:
                raise _check(f"host veth {i.name} MAC {hv.mac} does not match {i.mac}")
            found = True
            break
    if not found:
        raise _check(f"no host veth in bridge {conf.bridge} peers with {args.ifname}")


def _check_routes(sb: netlink.IPRoute, prev: Result) -> None:
    for family in (4, 6):
        wanted = [r for r in prev.routes if r.family == family]
        if not wanted:
            continue
        table = netlink.routes(sb, FAMILY[family])
        have = set()
        for m in table:
            dst_s = f"{m.dst}/{m.dst_len}" if m.dst else DEFAULT_DST[family].with_prefixlen
            have.add((ipaddress.ip_interface(dst_s).network, m.gateway))
        for r in wanted:
            gws = {gw for net, gw in have if net == r.dst.network}
            if not gws or (r.gw is not None and str(r.gw) not in gws):
                raise _check(f"route {r.dst.network} via {r.gw} not found in the sandbox")


def _check(msg: str) -> CniError:
    return CniError(CHECK_FAILED, f"CHECK: {msg}")


# --------------------------------------------------------------------------- GC / STATUS


def gc(args: CmdArgs) -> None:
    conf = load(args)
    keep = args.valid_attachments()
    errors: list[str] = []
    if conf.ipam_type:
        try:
            ipam.gc(args, conf.ipam_type)
        except CniError as err:
            errors.append(err.msg)
    errors += masq.gc(conf.name, keep)
    try:
        host = netlink.host_socket()
        # Pairs a DEL buried, left behind by a server that died before its reaper ran.
        tombstones.reap(host)
        names = netlink.names(host)
        spoofcheck.remove(spoofcheck.stale_refs(names))
    except CniError as err:
        errors.append(err.msg)
    if errors:
        raise CniError(INTERNAL, "GC incomplete: " + "; ".join(errors))


def status(args: CmdArgs) -> None:
    conf = load(args)
    if conf.ipam_type:
        ipam.status(args, conf.ipam_type)
