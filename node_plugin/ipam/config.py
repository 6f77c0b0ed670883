"""host-local's configuration: the reference's fields, validated, with ranges made canonical.

Pure (pydantic + allocator). IPAM plugins get the whole network config; this reads
`ipam`, `runtimeConfig.ipRanges`/`ips`, `args.cni.ips` and CNI_ARGS `IP`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from node_plugin.cni import cniargs
from node_plugin.cni.errors import INVALID_CONFIG, INVALID_ENV, CniError, invalid_config
from node_plugin.cni.gomodel import IP, GoModel, RequestedIP, config_error
from node_plugin.cni.result import Route, parse_interface
from node_plugin.cni.versions import parse
from node_plugin.ipam.allocator import IPAddress, Range, RangeSet, check_sets

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


class RangeConf(GoModel):
    subnet: str
    range_start: IP | None = Field(None, alias="rangeStart")
    range_end: IP | None = Field(None, alias="rangeEnd")
    gateway: IP | None = None


class RouteConf(GoModel):
    dst: str
    gw: IP | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


class IpamSection(GoModel):
    type: str = ""
    subnet: str = ""
    range_start: IP | None = Field(None, alias="rangeStart")
    range_end: IP | None = Field(None, alias="rangeEnd")
    gateway: IP | None = None
    ranges: list[list[RangeConf]] = Field(default_factory=list)
    routes: list[RouteConf] = Field(default_factory=list)
    data_dir: str = Field("", alias="dataDir")
    resolv_conf: str = Field("", alias="resolvConf")
    range_from_file: str = Field("", alias="rangeFromFile")


class CniArgsSection(GoModel):
    ips: list[RequestedIP] = Field(default_factory=list)


class ArgsSection(GoModel):
    cni: CniArgsSection | None = None


class RuntimeSection(GoModel):
    ip_ranges: list[list[RangeConf]] = Field(default_factory=list, alias="ipRanges")
    ips: list[RequestedIP] = Field(default_factory=list)


class NetSection(GoModel):
    name: str
    ipam: IpamSection | None = None
    runtime_config: RuntimeSection = Field(default_factory=RuntimeSection, alias="runtimeConfig")
    args: ArgsSection | None = None


@dataclass(frozen=True)
class IpamConfig:
    network: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...]
    data_dir: str
    resolv_conf: str
    requested: tuple[IPAddress, ...]


def load(
    config: dict[str, Any], cni_args: str, version: str, other_args: tuple[str, ...] = ()
) -> IpamConfig:
    """Validate and canonicalize; `other_args` are CNI_ARGS keys the calling plugin owns."""
    try:
        net = NetSection.model_validate(config)
    except ValidationError as exc:
        raise config_error(exc) from None
    if net.ipam is None:
        raise CniError(
            INVALID_CONFIG, "invalid network config: ipam: IPAM config missing 'ipam' key"
        )
    ipam = net.ipam

    sets: list[RangeSet] = []
    labels: list[str] = []
    for n, rs in enumerate(net.runtime_config.ip_ranges):
        labels.append(f"runtimeConfig.ipRanges[{n}]")
        sets.append(_range_set(rs, labels[-1]))
    if ipam.subnet:
        labels.append("ipam")
        r = Range.build(ipam.subnet, ipam.range_start, ipam.range_end, ipam.gateway, "ipam")
        sets.append(RangeSet((r,)))
    for n, rs in enumerate(ipam.ranges):
        labels.append(f"ipam.ranges[{n}]")
        sets.append(_range_set(rs, labels[-1]))
    if not sets and ipam.range_from_file:
        sets.append(_range_from_file(ipam.range_from_file))
        labels.append("ipam.rangeFromFile")
    if not sets:
        raise invalid_config("ipam.ranges", "no IP ranges specified")
    check_sets(sets, lambda j: labels[j])
    if parse(version) < (0, 3, 0):
        for family in (4, 6):
            if sum(1 for s in sets if s.version == family) > 1:
                raise invalid_config(
                    "ipam.ranges",
                    f"cniVersion {version} does not support more than 1 address per family",
                )

    routes = tuple(_route(r, f"ipam.routes[{n}]") for n, r in enumerate(ipam.routes))
    return IpamConfig(
        network=net.name,
        range_sets=tuple(sets),
        routes=routes,
        data_dir=ipam.data_dir or DEFAULT_DATA_DIR,
        resolv_conf=ipam.resolv_conf,
        requested=_requested(net, cni_args, other_args),
    )


def _range_set(ranges: list[RangeConf], where: str) -> RangeSet:
    built = [
        Range.build(r.subnet, r.range_start, r.range_end, r.gateway, f"{where}[{n}]")
        for n, r in enumerate(ranges)
    ]
    return RangeSet.build(built, where)


def _range_from_file(path: str) -> RangeSet:
    try:
        raw = json.loads(Path(path).read_bytes())
        conf = RangeConf.model_validate(raw)
    except OSError as exc:
        raise invalid_config("ipam.rangeFromFile", f"cannot read {path!r}: {exc}") from None
    except (ValueError, ValidationError) as exc:
        raise invalid_config("ipam.rangeFromFile", f"{path!r} is not a range: {exc}") from None
    where = "ipam.rangeFromFile"
    return RangeSet(
        (Range.build(conf.subnet, conf.range_start, conf.range_end, conf.gateway, where),)
    )


def _route(r: RouteConf, where: str) -> Route:
    dst = parse_interface(r.dst, f"network config: {where}.dst")
    if r.gw is not None and r.gw.version != dst.version:
        raise invalid_config(f"{where}.gw", f"{r.gw} is not in the family of {r.dst}")
    return Route(
        dst=dst,
        gw=r.gw,
        mtu=r.mtu,
        advmss=r.advmss,
        priority=r.priority,
        table=r.table,
        scope=r.scope,
    )


def _requested(net: NetSection, cni_args: str, other: tuple[str, ...]) -> tuple[IPAddress, ...]:
    """CNI_ARGS `IP`, then `args.cni.ips`, else `runtimeConfig.ips` (args wins: CONVENTIONS.md)."""
    out: list[IPAddress] = []
    raw = cniargs.parse(cni_args, ("IP", *other)).get("IP", "")
    if raw:
        try:
            out.append(ipaddress.ip_address(raw.split("/", 1)[0]))
        except ValueError:
            raise CniError(INVALID_ENV, f"CNI_ARGS: IP={raw!r} is not an IP address") from None
    from_args = net.args.cni.ips if net.args and net.args.cni else []
    out.extend(from_args or net.runtime_config.ips)
    unique: list[IPAddress] = []
    for ip in out:
        if ip not in unique:
            unique.append(ip)
    return tuple(unique)
