from __future__ import annotations

import ipaddress
import itertools

import pytest

from node_plugin.cni.errors import CniError
from node_plugin.ipam.allocator import Range, RangeSet, candidates, check_sets


def ip(s: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(s)


def rng(
    subnet: str, start: str | None = None, end: str | None = None, gw: str | None = None
) -> Range:
    return Range.build(
        subnet,
        ip(start) if start else None,
        ip(end) if end else None,
        ip(gw) if gw else None,
        "ipam",
    )


def order(rs: RangeSet, last: str | None = None, n: int = 100) -> list[str]:
    return [str(a) for a, _ in itertools.islice(candidates(rs, ip(last) if last else None), n)]


def test_defaults_follow_the_reference() -> None:
    r = rng("10.0.0.0/24")
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.0.0.1", "10.0.0.254", "10.0.0.1")
    assert r.allocatable() == 253
    v6 = rng("fd00::/120")
    assert (str(v6.start), str(v6.end)) == ("fd00::1", "fd00::ff")


def test_candidates_start_after_last_reserved_wrap_and_skip_gateway() -> None:
    rs = RangeSet((rng("10.0.0.0/29"),))
    assert order(rs) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    assert order(rs, "10.0.0.4") == ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    # A last-reserved address outside the set restarts from the beginning.
    assert order(rs, "192.168.0.1")[0] == "10.0.0.2"


def test_candidates_walk_every_range_of_a_set() -> None:
    rs = RangeSet(
        (rng("10.0.0.0/24", "10.0.0.10", "10.0.0.11"), rng("10.0.1.0/24", "10.0.1.1", "10.0.1.3"))
    )
    # 10.0.1.1 is that range's gateway
    assert order(rs) == ["10.0.0.10", "10.0.0.11", "10.0.1.2", "10.0.1.3"]
    assert order(rs, "10.0.1.2") == ["10.0.1.3", "10.0.0.10", "10.0.0.11", "10.0.1.2"]


def test_single_address_range_that_is_its_gateway_yields_nothing() -> None:
    rs = RangeSet((rng("10.0.0.0/24", "10.0.0.1", "10.0.0.1"),))
    assert order(rs) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("10.0.0.0/31",), "too small"),
        (("fd00::/127",), "too small"),
        (("10.0.0.1/24",), "host bits"),
        (("10.0.0.0",), "no prefix"),
        (("10.0.0.0/24", "10.0.1.1"), "rangeStart"),
        (("10.0.0.0/24", None, "10.0.1.1"), "rangeEnd"),
        (("10.0.0.0/24", "10.0.0.9", "10.0.0.3"), "after rangeEnd"),
        (("10.0.0.0/24", None, None, "fd00::1"), "gateway"),
    ],
)
def test_invalid_ranges(args: tuple[str | None, ...], needle: str) -> None:
    with pytest.raises(CniError) as info:
        rng(*args)  # type: ignore[arg-type]
    assert info.value.code == 7 and needle in info.value.msg


def test_overlaps_use_the_allocatable_interval() -> None:
    a = rng("10.0.0.0/24", "10.0.0.10", "10.0.0.20")
    b = rng("10.0.0.0/24", "10.0.0.21", "10.0.0.30")
    assert not a.overlaps(b)
    with pytest.raises(CniError):
        RangeSet.build([a, rng("10.0.0.0/24", "10.0.0.20", "10.0.0.25")], "ipam.ranges[0]")
    with pytest.raises(CniError):
        RangeSet.build([a, rng("fd00::/64")], "ipam.ranges[0]")
    sets = [RangeSet((a,)), RangeSet((rng("10.0.0.0/16"),))]
    with pytest.raises(CniError) as info:
        check_sets(sets, lambda j: f"ipam.ranges[{j}]")
    assert "ipam.ranges[1]" in info.value.msg
