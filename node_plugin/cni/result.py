"""The CNI result, held in its current (1.1.0) shape, read from and written to every version.

Pure: plugins build a `Result`; `to_json(version)` writes what a runtime speaking
`version` expects, `from_json(data, version)` reads a prevResult or a delegate's
answer in any version.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from node_plugin.cni.errors import INVALID_CONFIG, CniError
from node_plugin.cni.versions import parse

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version


@dataclass
class Route:
    """`dst` keeps the address as written (as Go's types.IPNet does); the kernel gets `.network`."""

    dst: IPInterface
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None

    @property
    def family(self) -> int:
        return self.dst.version

    @property
    def is_default(self) -> bool:
        return self.dst.network.prefixlen == 0


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_set(self) -> bool:
        return bool(self.nameservers or self.domain or self.search or self.options)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_json(cls, data: object, where: str = "dns") -> DNS:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise _bad(where, "must be an object")
        return cls(
            nameservers=_str_list(data.get("nameservers"), f"{where}.nameservers"),
            domain=_str(data.get("domain"), f"{where}.domain"),
            search=_str_list(data.get("search"), f"{where}.search"),
            options=_str_list(data.get("options"), f"{where}.options"),
        )


@dataclass
class Result:
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    # ---- writing -------------------------------------------------------
    def to_json(self, version: str) -> dict[str, Any]:
        v = parse(version)
        if v < (0, 3, 0):
            return self._to_020(version)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [_interface_json(i, v) for i in self.interfaces]
        if self.ips:
            out["ips"] = [_ip_json(ip, v) for ip in self.ips]
        if self.routes:
            out["routes"] = [_route_json(r, v) for r in self.routes]
        out["dns"] = self.dns.to_json()
        return out

    def _to_020(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version}
        for family, key in ((4, "ip4"), (6, "ip6")):
            ips = [ip for ip in self.ips if ip.family == family]
            if len(ips) > 1:
                raise CniError(
                    INVALID_CONFIG,
                    f"cniVersion {version} cannot carry more than one IPv{family} address",
                )
            if not ips:
                continue
            entry: dict[str, Any] = {"ip": str(ips[0].address)}
            if ips[0].gateway is not None:
                entry["gateway"] = str(ips[0].gateway)
            routes = [_route_json(r, (0, 2, 0)) for r in self.routes if r.family == family]
            if routes:
                entry["routes"] = routes
            out[key] = entry
        out["dns"] = self.dns.to_json()
        return out

    # ---- reading -------------------------------------------------------
    @classmethod
    def from_json(cls, data: object, version: str, where: str = "prevResult") -> Result:
        if not isinstance(data, dict):
            raise _bad(where, "must be an object")
        if parse(version) < (0, 3, 0):
            return cls._from_020(data, where)
        result = cls(dns=DNS.from_json(data.get("dns"), f"{where}.dns"))
        for n, raw in enumerate(_list(data.get("interfaces"), f"{where}.interfaces")):
            w = f"{where}.interfaces[{n}]"
            if not isinstance(raw, dict):
                raise _bad(w, "must be an object")
            result.interfaces.append(
                Interface(
                    name=_str(raw.get("name"), f"{w}.name"),
                    mac=_str(raw.get("mac"), f"{w}.mac"),
                    mtu=_int(raw.get("mtu"), f"{w}.mtu") or 0,
                    sandbox=_str(raw.get("sandbox"), f"{w}.sandbox"),
                    socket_path=_str(raw.get("socketPath"), f"{w}.socketPath"),
                    pci_id=_str(raw.get("pciID"), f"{w}.pciID"),
                )
            )
        for n, raw in enumerate(_list(data.get("ips"), f"{where}.ips")):
            w = f"{where}.ips[{n}]"
            if not isinstance(raw, dict):
                raise _bad(w, "must be an object")
            result.ips.append(
                IPConfig(
                    address=parse_interface(raw.get("address"), f"{w}.address"),
                    gateway=_opt_ip(raw.get("gateway"), f"{w}.gateway"),
                    interface=_int(raw.get("interface"), f"{w}.interface"),
                )
            )
        for n, raw in enumerate(_list(data.get("routes"), f"{where}.routes")):
            result.routes.append(route_from_json(raw, f"{where}.routes[{n}]"))
        return result

    @classmethod
    def _from_020(cls, data: dict[str, Any], where: str) -> Result:
        result = cls(dns=DNS.from_json(data.get("dns"), f"{where}.dns"))
        for key in ("ip4", "ip6"):
            raw = data.get(key)
            if raw is None:
                continue
            w = f"{where}.{key}"
            if not isinstance(raw, dict):
                raise _bad(w, "must be an object")
            result.ips.append(
                IPConfig(
                    address=parse_interface(raw.get("ip"), f"{w}.ip"),
                    gateway=_opt_ip(raw.get("gateway"), f"{w}.gateway"),
                )
            )
            for n, r in enumerate(_list(raw.get("routes"), f"{w}.routes")):
                result.routes.append(route_from_json(r, f"{w}.routes[{n}]"))
        return result


def route_from_json(raw: object, where: str) -> Route:
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object")
    return Route(
        dst=parse_interface(raw.get("dst"), f"{where}.dst"),
        gw=_opt_ip(raw.get("gw"), f"{where}.gw"),
        mtu=_int(raw.get("mtu"), f"{where}.mtu") or 0,
        advmss=_int(raw.get("advmss"), f"{where}.advmss") or 0,
        priority=_int(raw.get("priority"), f"{where}.priority") or 0,
        table=_int(raw.get("table"), f"{where}.table"),
        scope=_int(raw.get("scope"), f"{where}.scope"),
    )


def route_to_json(route: Route, version: str) -> dict[str, Any]:
    return _route_json(route, parse(version))


def parse_interface(raw: object, where: str) -> IPInterface:
    """'10.0.0.5/24' -> IPv4Interface; a bare address or garbage is a config error."""
    if not isinstance(raw, str) or "/" not in raw:
        raise _bad(where, f"must be an address in CIDR notation, got {raw!r}")
    try:
        return ipaddress.ip_interface(raw)
    except ValueError as exc:
        raise _bad(where, str(exc)) from None


def _interface_json(i: Interface, v: tuple[int, int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": i.name}
    if i.mac:
        out["mac"] = i.mac
    if i.mtu and v >= (1, 1, 0):
        out["mtu"] = i.mtu
    if i.sandbox:
        out["sandbox"] = i.sandbox
    if v >= (1, 1, 0):
        if i.socket_path:
            out["socketPath"] = i.socket_path
        if i.pci_id:
            out["pciID"] = i.pci_id
    return out


def _ip_json(ip: IPConfig, v: tuple[int, int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if v < (1, 0, 0):
        out["version"] = str(ip.family)
    if ip.interface is not None:
        out["interface"] = ip.interface
    out["address"] = str(ip.address)
    if ip.gateway is not None:
        out["gateway"] = str(ip.gateway)
    return out


def _route_json(r: Route, v: tuple[int, int, int]) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(r.dst)}
    if r.gw is not None:
        out["gw"] = str(r.gw)
    if v >= (1, 1, 0):
        if r.mtu:
            out["mtu"] = r.mtu
        if r.advmss:
            out["advmss"] = r.advmss
        if r.priority:
            out["priority"] = r.priority
        if r.table is not None:
            out["table"] = r.table
        if r.scope is not None:
            out["scope"] = r.scope
    return out


def _bad(where: str, problem: str) -> CniError:
    return CniError(INVALID_CONFIG, f"invalid {where}: {problem}")


def _list(raw: object, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad(where, "must be a list")
    return raw


def _str(raw: object, where: str) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise _bad(where, "must be a string")
    return raw


def _str_list(raw: object, where: str) -> list[str]:
    items = _list(raw, where)
    if not all(isinstance(x, str) for x in items):
        raise _bad(where, "must be a list of strings")
    return [str(x) for x in items]


def _int(raw: object, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _bad(where, "must be an integer")
    return raw


def _opt_ip(raw: object, where: str) -> IPAddress | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, str):
        raise _bad(where, "must be an IP address string")
    try:
        return ipaddress.ip_address(raw)
    except ValueError as exc:
        raise _bad(where, str(exc)) from None
