"""node_plugin.kernel.rtnl against the kernel, checked with iproute2 (an independent tool)."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from node_plugin.cni.errors import INTERNAL, CniError
from node_plugin.kernel import netlink, netns, rtnl
from node_plugin.kernel.rtnl import Rtnl, RtnlError
from tests.integration.plugin.kernel import Netns, create_netns, delete_netns

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[Netns]:
    made = create_netns("cwrt-")
    try:
        yield made
    finally:
        delete_netns(made)


@pytest.fixture
def sock(ns: Netns) -> Iterator[Rtnl]:
    """A socket opened inside `ns` (a netlink socket stays bound to where it was opened)."""
    with netns.entered(ns.path):
        opened = Rtnl()
    try:
        yield opened
    finally:
        opened.close()


def ip_json(ns: Netns, *args: str) -> Any:
    out = subprocess.run(
        ["ip", "-n", ns.name, "-d", "-j", *args], capture_output=True, check=True, text=True
    ).stdout
    return json.loads(out) if out.strip() else []


def test_links_are_created_looked_up_changed_and_deleted(ns: Netns, sock: Rtnl) -> None:
    assert sock.get_link(name="nope0") is None
    assert sock.get_link(index=999_999) is None
    sock.add_bridge("cwbr0", mtu=1450)
    br = sock.get_link(name="cwbr0")
    assert br is not None
    assert (br.kind, br.attr_u32(rtnl.IFLA_MTU), br.operstate) == ("bridge", 1450, "DOWN")
    sock.set_link(br.index, up=True, promisc=True)

    sock.add_veth("cwv0", "cwp0", mtu=1400, peer_mac="02:11:22:33:44:55")
    host, peer = sock.get_link(name="cwv0"), sock.get_link(name="cwp0")
    assert host is not None and peer is not None
    assert host.attr_u32(rtnl.IFLA_LINK) == peer.index
    sock.set_link(host.index, master=br.index, up=True)
    sock.set_brport(host.index, hairpin=True, isolated=True)

    shown = {link["ifname"]: link for link in ip_json(ns, "link", "show")}
    assert shown["cwbr0"]["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in shown["cwbr0"]["flags"] and shown["cwbr0"]["promiscuity"] == 1
    assert shown["cwv0"]["master"] == "cwbr0"
    assert shown["cwv0"]["mtu"] == 1400
    assert shown["cwp0"]["address"] == "02:11:22:33:44:55"
    port = shown["cwv0"]["linkinfo"]["info_slave_data"]
    assert port["hairpin"] is True and port["isolated"] is True
    looked_up = sock.get_link(index=host.index)
    assert (
        looked_up is not None
        and looked_up.name == "cwv0"
        and looked_up.mac == shown["cwv0"]["address"]
    )
    brport = sock.brport(host.index)
    assert brport is not None
    assert brport.brport_flag(rtnl.IFLA_BRPORT_MODE) is True
    assert brport.brport_flag(rtnl.IFLA_BRPORT_ISOLATED) is True
    assert {link.name for link in sock.links()} == set(shown)

    with pytest.raises(RtnlError) as exists:
        sock.add_veth("cwv0", "cwp9")
    assert exists.value.code == 17
    sock.del_link(host.index)
    assert sock.get_link(name="cwp0") is None, "deleting one end deletes the pair"


def test_the_peer_lands_in_another_namespace(ns: Netns, sock: Rtnl) -> None:
    other = create_netns("cwrt-")
    try:
        fd = os.open(other.path, os.O_RDONLY)
        try:
            sock.add_veth("cwv1", "eth0", peer_netns_fd=fd, peer_mac="02:aa:bb:cc:dd:ee")
        finally:
            os.close(fd)
        assert other.link("eth0") is not None
        assert other.link("eth0")["address"] == "02:aa:bb:cc:dd:ee"  # type: ignore[index]
        assert sock.get_link(name="eth0") is None
        with pytest.raises(RtnlError) as exists:
            fd = os.open(other.path, os.O_RDONLY)
            try:
                sock.add_veth("cwv2", "eth0", peer_netns_fd=fd)
            finally:
                os.close(fd)
        assert exists.value.code == 17
        assert sock.get_link(name="cwv2") is None, "nothing left behind"
    finally:
        delete_netns(other)


def test_addresses_and_routes(ns: Netns, sock: Rtnl) -> None:
    sock.add_veth("cwv0", "cwp0")
    link = sock.get_link(name="cwp0")
    assert link is not None
    sock.set_link(link.index, up=True)
    v4 = ipaddress.ip_interface("10.5.0.2/24")
    v6 = ipaddress.ip_interface("fd00:5::2/64")
    sock.add_addr(link.index, v4, broadcast=True)
    sock.add_addr(link.index, v6)
    shown = ip_json(ns, "addr", "show", "dev", "cwp0")[0]["addr_info"]
    assert {
        "family": "inet",
        "local": "10.5.0.2",
        "prefixlen": 24,
        "broadcast": "10.5.0.255",
    }.items() <= next(a for a in shown if a["family"] == "inet").items()
    assert any(a["local"] == "fd00:5::2" for a in shown)
    ours = {str(a.interface) for a in sock.addrs() if a.index == link.index}
    assert {"10.5.0.2/24", "fd00:5::2/64"} <= ours
    with pytest.raises(RtnlError, match="File exists"):
        sock.add_addr(link.index, v4)

    gateway = ipaddress.ip_address("10.5.0.1")
    sock.add_route(ipaddress.ip_network("0.0.0.0/0"), oif=link.index, gateway=gateway, proto=3)
    sock.add_route(
        ipaddress.ip_network("10.6.0.0/16"),
        oif=link.index,
        priority=7,
        mtu=1300,
        advmss=1200,
        table=100,
        proto=3,
    )
    routes = {
        (r["dst"], r.get("table", "main")): r
        for r in ip_json(ns, "route", "show", "table", "all")
        if r.get("type") == "unicast" and r.get("protocol") == "boot"
    }
    default = routes["default", "main"]
    assert default["gateway"] == "10.5.0.1" and default["dev"] == "cwp0"
    assert default["scope"] == "global"
    other = routes["10.6.0.0/16", "100"]
    assert other["metric"] == 7
    assert {"mtu": 1300, "advmss": 1200}.items() <= {
        k: v for m in other["metrics"] for k, v in m.items()
    }.items()
    ours_routes = {(r.dst, r.dst_len, r.gateway, r.table) for r in sock.routes(rtnl.AF_INET)}
    assert (None, 0, "10.5.0.1", 254) in ours_routes
    assert ("10.6.0.0", 16, None, 100) in ours_routes
    with pytest.raises(RtnlError, match="unreachable"):
        sock.add_route(
            ipaddress.ip_network("10.9.0.0/16"),
            oif=link.index,
            gateway=ipaddress.ip_address("10.99.0.1"),
        )
    sock.del_addr(link.index, v6)
    assert "fd00:5::2/64" not in {str(a.interface) for a in sock.addrs() if a.index == link.index}


def test_dumps_spanning_many_datagrams_are_complete(ns: Netns, sock: Rtnl) -> None:
    batch = "".join(f"link add cwm{i} type veth peer name cwn{i}\n" for i in range(200))
    subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=batch, text=True, check=True)
    names = {link.name for link in sock.links()}
    assert {f"cwm{i}" for i in range(200)} | {f"cwn{i}" for i in range(200)} <= names
    assert len(names) == 401


def test_sockets_are_independent_per_thread(ns: Netns, sock: Rtnl) -> None:
    """The server's workers each hold their own socket; requests never cross."""
    sock.add_bridge("cwbr1")
    errors: list[BaseException] = []

    def hammer(name: str) -> None:
        try:
            with netns.entered(ns.path), Rtnl() as own:
                for _ in range(200):
                    link = own.get_link(name=name)
                    assert link is not None and link.name == name
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in ("lo", "cwbr1") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_rename_group_alias_and_deleting_a_group_at_once(ns: Netns, sock: Rtnl) -> None:
    group = 0x63777462
    for i in range(5):
        sock.add_veth(f"cwg{i}", f"cwh{i}")
    keep = sock.get_link(name="cwg4")
    assert keep is not None
    indices = []
    for i in range(4):
        link = sock.get_link(name=f"cwg{i}")
        assert link is not None
        sock.set_link(link.index, up=True)
        sock.set_link(link.index, up=False, group=group)
        sock.set_link(link.index, name=f"cwx{i}", alias=f"dead {i}")
        indices.append(link.index)
    listed = ip_json(ns, "link", "show", "group", hex(group))
    shown = {link["ifname"]: link for link in listed if link}  # iproute2: {} for the rest
    assert set(shown) == {f"cwx{i}" for i in range(4)}
    assert shown["cwx0"]["ifalias"] == "dead 0" and shown["cwx0"]["group"] == str(group)
    renamed = sock.get_link(index=indices[0])
    assert renamed is not None and (renamed.name, renamed.group) == ("cwx0", group)

    sock.del_group(group)  # one request: the four pairs (and so their peers) go
    names = {link.name for link in sock.links()}
    assert names == {"lo", "cwg4", "cwh4"}
    with pytest.raises(RtnlError) as empty:
        sock.del_group(group)
    assert empty.value.code == errno.ENODEV


def test_a_peer_in_another_namespace_is_named_by_its_namespace_id(ns: Netns, sock: Rtnl) -> None:
    other = create_netns("cwrt-")
    fd = os.open(other.path, os.O_RDONLY)
    try:
        sock.add_veth("cwv3", "eth0", peer_netns_fd=fd)
        here = sock.get_link(name="cwv3")
        assert here is not None and here.link_netnsid is not None
        assert sock.nsid(fd) == here.link_netnsid
        own = os.open(ns.path, os.O_RDONLY)
        try:
            # A namespace has no id for itself until something names it; never the peer's.
            assert sock.nsid(own) != here.link_netnsid
        finally:
            os.close(own)
        sock.add_veth("cwv4", "cwp4")
        local = sock.get_link(name="cwv4")
        assert local is not None and local.link_netnsid is None
    finally:
        os.close(fd)
        delete_netns(other)


HOSTGW = 157  # cni_operator.hostgw.ROUTE_PROTOCOL: an owner's tag on its routes


def on_link(ns: Netns, sock: Rtnl) -> int:
    """A veth pair with both ends up, 10.7.0.1/24 and fd00:7::1/64 on cwp0: gateways in
    10.7.0.0/24 and fd00:7::/64 are directly connected."""
    sock.add_veth("cwv0", "cwp0")
    for name in ("cwv0", "cwp0"):
        link = sock.get_link(name=name)
        assert link is not None
        sock.set_link(link.index, up=True)
    subprocess.run(
        ["ip", "-n", ns.name, "addr", "add", "fd00:7::1/64", "dev", "cwp0", "nodad"], check=True
    )
    subprocess.run(["ip", "-n", ns.name, "addr", "add", "10.7.0.1/24", "dev", "cwp0"], check=True)
    link = sock.get_link(name="cwp0")
    assert link is not None
    return link.index


def shown_routes(ns: Netns) -> list[tuple[str, str | None, str]]:
    """(dst, gateway, protocol) of every gateway route iproute2 lists in the main table, both
    families (unfiltered: iproute2 leaves out what a filter implies)."""
    return sorted(
        (r["dst"], r.get("gateway"), str(r.get("protocol")))
        for family in ("-4", "-6")
        for r in ip_json(ns, family, "route", "show", "table", "main")
        if "gateway" in r
    )


def test_routes_of_an_owner_are_replaced_listed_and_deleted(ns: Netns, sock: Rtnl) -> None:
    """What the agent's host-gw routing does, checked with iproute2."""
    on_link(ns, sock)
    net = ipaddress.ip_network
    addr = ipaddress.ip_address
    netlink.replace_route(sock, net("10.244.1.0/24"), addr("10.7.0.11"), protocol=HOSTGW)
    netlink.replace_route(sock, net("fd10:1::/64"), addr("fd00:7::11"), protocol=HOSTGW)
    assert shown_routes(ns) == [
        ("10.244.1.0/24", "10.7.0.11", str(HOSTGW)),
        ("fd10:1::/64", "fd00:7::11", str(HOSTGW)),
    ]
    # Replacing moves the route to the new gateway; it never adds a second one.
    netlink.replace_route(sock, net("10.244.1.0/24"), addr("10.7.0.12"), protocol=HOSTGW)
    assert shown_routes(ns)[0] == ("10.244.1.0/24", "10.7.0.12", str(HOSTGW))
    assert len(shown_routes(ns)) == 2

    # Others' routes: another protocol, or ours in another table, are not listed as ours.
    subprocess.run(
        ["ip", "-n", ns.name, "route", "add", "10.99.0.0/24", "via", "10.7.0.11"], check=True
    )
    other_table = ["10.98.0.0/24", "via", "10.7.0.11", "proto", str(HOSTGW), "table", "100"]
    subprocess.run(["ip", "-n", ns.name, "route", "add", *other_table], check=True)
    assert sorted(netlink.routes_of_protocol(sock, HOSTGW), key=str) == [
        (net("10.244.1.0/24"), addr("10.7.0.12")),
        (net("fd10:1::/64"), addr("fd00:7::11")),
    ]

    # Deleting names the owner: the other owner's route to the same place stays.
    assert not netlink.delete_route(sock, net("10.99.0.0/24"), addr("10.7.0.11"), protocol=HOSTGW)
    assert ("10.99.0.0/24", "10.7.0.11", "boot") in shown_routes(ns)
    assert netlink.delete_route(sock, net("10.244.1.0/24"), addr("10.7.0.12"), protocol=HOSTGW)
    assert netlink.delete_route(sock, net("fd10:1::/64"), addr("fd00:7::11"), protocol=HOSTGW)
    assert not netlink.delete_route(sock, net("fd10:1::/64"), addr("fd00:7::11"), protocol=HOSTGW)
    assert shown_routes(ns) == [("10.99.0.0/24", "10.7.0.11", "boot")]
    table_100 = ip_json(ns, "route", "show", "table", "100")
    assert [(r["dst"], r["gateway"]) for r in table_100] == [("10.98.0.0/24", "10.7.0.11")]


def test_a_route_the_kernel_refuses_says_which_and_why(ns: Netns, sock: Rtnl) -> None:
    on_link(ns, sock)
    with pytest.raises(CniError) as refused:
        netlink.replace_route(
            sock,
            ipaddress.ip_network("10.244.2.0/24"),
            ipaddress.ip_address("192.0.2.9"),  # not on a connected subnet
            protocol=HOSTGW,
        )
    assert refused.value.code == INTERNAL
    assert refused.value.msg.startswith("route 10.244.2.0/24 via 192.0.2.9: Network is unreachable")
    assert shown_routes(ns) == []


def test_interface_addresses_are_the_nodes_own_without_loopback_or_link_local(
    ns: Netns, sock: Rtnl
) -> None:
    subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
    on_link(ns, sock)
    found = {str(i) for i in netlink.interface_addresses(sock)}
    shown = {
        f"{a['local']}/{a['prefixlen']}"
        for entry in ip_json(ns, "addr", "show")
        for a in entry["addr_info"]
    }
    assert {"127.0.0.1/8", "::1/128"} <= shown and any(s.startswith("fe80:") for s in shown)
    assert found == {"10.7.0.1/24", "fd00:7::1/64"}
