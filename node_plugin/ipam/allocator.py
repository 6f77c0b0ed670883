"""host-local's address ranges and its round-robin choice of the next address.

Pure: no disk, no netlink. `Range.build` checks one range the way the reference
does (plus start <= end and matching families), `RangeSet` is one address per
set (a dual-stack network has two sets), and `candidates` yields addresses in
exactly the reference's order, so a store shared with the reference continues
its round-robin from `last_reserved_ip.<set>`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from node_plugin.cni.errors import invalid_config

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @classmethod
    def build(
        cls,
        subnet: str,
        start: IPAddress | None,
        end: IPAddress | None,
        gateway: IPAddress | None,
        where: str,
    ) -> Range:
        try:
            iface = ipaddress.ip_interface(subnet)
        except ValueError:
            raise invalid_config(f"{where}.subnet", f"{subnet!r} is not a CIDR") from None
        if "/" not in subnet:
            raise invalid_config(f"{where}.subnet", f"{subnet!r} is not a CIDR (no prefix length)")
        net = iface.network
        if net.prefixlen > net.max_prefixlen - 2:
            raise invalid_config(f"{where}.subnet", f"network {subnet} too small to allocate from")
        if iface.ip != net.network_address:
            raise invalid_config(
                f"{where}.subnet",
                f"{subnet} has host bits set; for a /{net.prefixlen} the network address "
                f"is {net.network_address}",
            )
        for label, value in (("gateway", gateway), ("rangeStart", start), ("rangeEnd", end)):
            if value is not None and value.version != net.version:
                raise invalid_config(
                    f"{where}.{label}", f"{value} is not an IPv{net.version} address like {subnet}"
                )
        first = net.network_address + 1
        last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
        if start is not None and start not in net:
            raise invalid_config(f"{where}.rangeStart", f"{start} not in network {subnet}")
        if end is not None and end not in net:
            raise invalid_config(f"{where}.rangeEnd", f"{end} not in network {subnet}")
        r = cls(
            subnet=net,
            start=start if start is not None else first,
            end=end if end is not None else last,
            gateway=gateway if gateway is not None else first,
        )
        if int(r.start) > int(r.end):
            raise invalid_config(f"{where}.rangeStart", f"{r.start} is after rangeEnd {r.end}")
        return r

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        # Compared as integers: mypy cannot order the IPv4Address | IPv6Address union, and
        # the version check makes the integers comparable.
        return ip.version == self.version and int(self.start) <= int(ip) <= int(self.end)

    def overlaps(self, other: Range) -> bool:
        return self.version == other.version and not (
            int(self.end) < int(other.start) or int(other.end) < int(self.start)
        )

    def allocatable(self) -> int:
        """How many addresses this range can hand out (its gateway never is)."""
        size = int(self.end) - int(self.start) + 1
        return size - (1 if self.contains(self.gateway) else 0)

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True)
class RangeSet:
    ranges: tuple[Range, ...]

    @classmethod
    def build(cls, ranges: Sequence[Range], where: str) -> RangeSet:
        if not ranges:
            raise invalid_config(where, "empty range set")
        family = ranges[0].version
        for n, r in enumerate(ranges):
            if r.version != family:
                raise invalid_config(f"{where}[{n}].subnet", "mixed address families in one set")
        for i, a in enumerate(ranges):
            for j in range(i + 1, len(ranges)):
                if a.overlaps(ranges[j]):
                    raise invalid_config(
                        f"{where}[{j}]", f"range {ranges[j]} overlaps with range {a} ({where}[{i}])"
                    )
        return cls(tuple(ranges))

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, ip: IPAddress) -> Range | None:
        for r in self.ranges:
            if r.contains(ip):
                return r
        return None

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def allocatable(self) -> int:
        return sum(r.allocatable() for r in self.ranges)

    def is_gateway(self, ip: IPAddress) -> bool:
        r = self.range_for(ip)
        return r is not None and r.gateway == ip

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def check_sets(sets: Sequence[RangeSet], where: Callable[[int], str]) -> None:
    """Range sets of one network must not overlap each other."""
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise invalid_config(where(j), f"range set {j} overlaps with range set {i}")


def candidates(rs: RangeSet, last_reserved: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
    """Addresses to try, in the reference's round-robin order.

    Starts after `last_reserved` when it lies in the set (else at the first
    range's start), walks every range once, wraps, and skips gateways.
    """
    ranges = rs.ranges
    idx = 0
    cur: IPAddress | None = None
    first: IPAddress | None = None
    if last_reserved is not None and rs.contains(last_reserved):
        for n, r in enumerate(ranges):
            if r.contains(last_reserved):
                idx, cur = n, last_reserved
                break
    while True:
        r = ranges[idx]
        if cur is None:
            cur = first = r.start
        else:
            if cur == r.end:
                idx = (idx + 1) % len(ranges)
                r = ranges[idx]
                cur = r.start
            else:
                cur = cur + 1
            if first is None:
                first = cur
            elif cur == first:
                return
        if cur == r.gateway:
            continue
        yield cur, r
