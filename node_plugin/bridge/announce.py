"""Announce a pod's addresses to its link: gratuitous ARP (IPv4), unsolicited NA (IPv6).

Why: host-local hands a released address to the next pod. Neighbours (other pods on the
bridge, the node) that cached the previous holder's MAC keep sending to it until their
stale entry has been probed and dropped, 5 s and more. The kernel's own announcement
(`arp_notify`) covers only addresses present when the link comes up, and goes out before
the bridge port forwards; the reference bridge sent an explicit gratuitous ARP
(`arping.GratuitousArpOverIface`) for years, until it relied on `arp_notify` alone and
reused addresses became unreachable for seconds (containernetworking/plugins#756).

Call it in the sandbox's namespace, after the bridge port is up. Best effort: an address
that cannot be announced is logged; the ADD does not fail for it. Needs CAP_NET_RAW.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import struct
import threading
from collections.abc import Iterable

from node_plugin.kernel import netns

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
BROADCAST_MAC = b"\xff" * 6
ND_NEIGHBOR_ADVERT = 136
ND_NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LINKADDR = 2
ALL_NODES = "ff02::1"

_ETHER_HEADER = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_NA = struct.Struct("!BBHI16sBB6s")


def gratuitous_arp_frame(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """An ARP request for our own address, broadcast, target MAC broadcast (as arping
    sends it; some devices ignore announcements with a zero target MAC)."""
    header = _ETHER_HEADER.pack(BROADCAST_MAC, mac, ETH_P_ARP)
    arp = _ARP.pack(
        ARPHRD_ETHER,
        ETH_P_IP,
        6,
        4,
        ARPOP_REQUEST,
        mac,
        address.packed,
        BROADCAST_MAC,
        address.packed,
    )
    return header + arp


def neighbour_advertisement(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """An unsolicited NA with the override flag and our MAC (RFC 4861 7.2.6); the kernel
    fills in the ICMPv6 checksum of a raw ICMPv6 socket."""
    return _NA.pack(
        ND_NEIGHBOR_ADVERT,
        0,
        0,
        ND_NA_FLAG_OVERRIDE,
        address.packed,
        ND_OPT_TARGET_LINKADDR,
        1,
        mac,
    )


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def announce(ifname: str, mac: str, addresses: Iterable[IPAddress]) -> None:
    """One announcement per address, out of `ifname` (in the calling thread's netns)."""
    raw_mac = mac_bytes(mac)
    for address in addresses:
        try:
            if isinstance(address, ipaddress.IPv4Address):
                _send_arp(ifname, raw_mac, address)
            else:
                _send_na(ifname, raw_mac, address)
        except OSError as exc:
            log.warning("could not announce %s on %s: %s", address, ifname, exc)


def _send_arp(ifname: str, mac: bytes, address: ipaddress.IPv4Address) -> None:
    # Protocol 0: the socket only sends, it never queues received frames.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((ifname, 0))
        sock.send(gratuitous_arp_frame(mac, address))
    finally:
        _closer.close_later(sock)


class SocketCloser:
    """Closes packet sockets off the caller's path: the kernel's packet_release waits for
    an RCU grace period (synchronize_net), 4-16 ms here, which an ADD must not pay. A
    process that exits first closes them on exit."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def close_later(self, sock: socket.socket) -> None:
        with self._lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._close_forever, name="packet-closer", daemon=True
                )
                self.thread.start()
        self._queue.put(sock)

    def _close_forever(self) -> None:
        # A thread starts in its creator's namespace, here a sandbox's: move to the
        # process's own (its main thread's) at once, or this thread would pin that sandbox.
        try:
            netns.join_process_netns()
        except OSError as exc:
            log.warning("packet-closer stays in the namespace it started in: %s", exc)
        while True:
            self._queue.get().close()


_closer = SocketCloser()


def _send_na(ifname: str, mac: bytes, address: ipaddress.IPv6Address) -> None:
    index = socket.if_nametoindex(ifname)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        # Receivers drop neighbour discovery that did not come with hop limit 255.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        # The source must be the announced address; binding fails while it is tentative
        # (enabledad): the kernel announces it itself after DAD then (ndisc_notify).
        sock.bind((str(address), 0, 0, 0))
        sock.sendto(neighbour_advertisement(mac, address), (ALL_NODES, 0, 0, index))
