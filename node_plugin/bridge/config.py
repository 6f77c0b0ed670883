"""The bridge plugin's configuration: every field of the reference `bridge`, validated.

Pure (pydantic). Cross-field rules give code 7 with the fields named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from node_plugin.cni import cniargs
from node_plugin.cni.errors import INVALID_ENV, CniError, invalid_config
from node_plugin.cni.gomodel import GoModel, config_error
from node_plugin.cni.result import DNS

DEFAULT_BRIDGE = "cni0"
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")  # fullmatch: no trailing newline


class VlanTrunkConf(GoModel):
    min_id: int | None = Field(None, alias="minID")
    max_id: int | None = Field(None, alias="maxID")
    id: int | None = None


class MacArgs(GoModel):
    mac: str = ""


class ArgsConf(GoModel):
    cni: MacArgs | None = None


class RuntimeConf(GoModel):
    mac: str = ""


class IpamRef(GoModel):
    type: str = ""


class DnsConf(GoModel):
    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class BridgeNetConf(GoModel):
    name: str
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = Field(False, alias="isGateway")
    is_default_gateway: bool = Field(False, alias="isDefaultGateway")
    force_address: bool = Field(False, alias="forceAddress")
    ip_masq: bool = Field(False, alias="ipMasq")
    ip_masq_backend: Literal["iptables", "nftables"] | None = Field(None, alias="ipMasqBackend")
    mtu: int = 0
    hairpin_mode: bool = Field(False, alias="hairpinMode")
    promisc_mode: bool = Field(False, alias="promiscMode")
    vlan: int = 0
    vlan_trunk: list[VlanTrunkConf] | None = Field(None, alias="vlanTrunk")
    preserve_default_vlan: bool = Field(True, alias="preserveDefaultVlan")
    macspoofchk: bool = False
    enabledad: bool = False
    disable_container_interface: bool = Field(False, alias="disableContainerInterface")
    port_isolation: bool = Field(False, alias="portIsolation")
    ipam: IpamRef = Field(default_factory=IpamRef)
    dns: DnsConf = Field(default_factory=DnsConf)
    args: ArgsConf | None = None
    runtime_config: RuntimeConf = Field(default_factory=RuntimeConf, alias="runtimeConfig")

    @model_validator(mode="after")
    def _cross_checks(self) -> BridgeNetConf:
        if not 0 <= self.vlan <= 4094:
            raise ValueError(f"vlan: {self.vlan} is not between 0 and 4094")
        if self.vlan and self.vlan_trunk:
            raise ValueError("vlan and vlanTrunk cannot be set at the same time")
        if self.hairpin_mode and self.promisc_mode:
            raise ValueError("hairpinMode and promiscMode cannot both be true")
        if self.disable_container_interface and self.ipam.type:
            raise ValueError("disableContainerInterface cannot be used with ipam (L3) config")
        if self.mtu and not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu: {self.mtu} is not between 68 and 65535")
        if (
            not self.bridge
            or len(self.bridge.encode()) > 15
            or any(c in self.bridge for c in "/: \t\n")
        ):
            raise ValueError(f"bridge: {self.bridge!r} is not a valid interface name")
        return self


@dataclass(frozen=True)
class BridgeConfig:
    raw: BridgeNetConf
    name: str
    bridge: str
    is_gateway: bool
    mac: str
    vlans: tuple[int, ...]
    dns: DNS

    @property
    def ipam_type(self) -> str:
        return self.raw.ipam.type

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.raw.vlan or self.raw.vlan_trunk is not None)


def load(config: dict[str, Any], cni_args: str, extra_args: tuple[str, ...] = ()) -> BridgeConfig:
    try:
        conf = BridgeNetConf.model_validate(config)
    except ValidationError as exc:
        raise config_error(exc) from None
    mac = ""
    env_mac = cniargs.parse(cni_args, ("MAC", *extra_args)).get("MAC", "")
    if env_mac:
        mac = _mac(env_mac, "CNI_ARGS MAC", env=True)
    if conf.args and conf.args.cni and conf.args.cni.mac:
        mac = _mac(conf.args.cni.mac, "args.cni.mac")
    if conf.runtime_config.mac:
        mac = _mac(conf.runtime_config.mac, "runtimeConfig.mac")
    dns = DNS(
        nameservers=list(conf.dns.nameservers),
        domain=conf.dns.domain,
        search=list(conf.dns.search),
        options=list(conf.dns.options),
    )
    return BridgeConfig(
        raw=conf,
        name=conf.name,
        bridge=conf.bridge,
        is_gateway=conf.is_gateway or conf.is_default_gateway,
        mac=mac,
        vlans=trunk_vlans(conf.vlan_trunk),
        dns=dns,
    )


def trunk_vlans(trunks: list[VlanTrunkConf] | None) -> tuple[int, ...]:
    """The sorted set of tagged VLANs a vlanTrunk list asks for."""
    if not trunks:
        return ()
    vids: set[int] = set()
    for n, t in enumerate(trunks):
        where = f"vlanTrunk[{n}]"
        if (t.min_id is None) != (t.max_id is None):
            missing = "minID" if t.min_id is None else "maxID"
            raise invalid_config(f"{where}.{missing}", "minID and maxID must be set together")
        if t.min_id is not None and t.max_id is not None:
            for label, v in (("minID", t.min_id), ("maxID", t.max_id)):
                if not 1 <= v <= 4094:
                    raise invalid_config(f"{where}.{label}", f"{v} is not between 1 and 4094")
            if t.max_id < t.min_id:
                raise invalid_config(f"{where}.minID", "minID is greater than maxID")
            vids.update(range(t.min_id, t.max_id + 1))
        if t.id is not None:
            if not 1 <= t.id <= 4094:
                raise invalid_config(f"{where}.id", f"{t.id} is not between 1 and 4094")
            vids.add(t.id)
    return tuple(sorted(vids))


def _mac(value: str, where: str, env: bool = False) -> str:
    if not _MAC.fullmatch(value) or int(value[:2], 16) & 1:
        problem = f"{value!r} is not a unicast MAC address"
        if env:
            raise CniError(INVALID_ENV, f"{where}: {problem}")
        raise invalid_config(where, problem)
    return value.replace("-", ":").lower()
