from __future__ import annotations

from typing import Any

import pytest

from node_plugin.bridge import config as bridge_config
from node_plugin.cni.errors import CniError


def load(cni_args: str = "", **fields: Any) -> bridge_config.BridgeConfig:
    return bridge_config.load({"cniVersion": "1.1.0", "name": "net", **fields}, cni_args)


def test_defaults_match_the_reference() -> None:
    conf = load()
    assert conf.bridge == "cni0" and not conf.is_gateway and conf.mac == ""
    assert conf.raw.preserve_default_vlan is True and conf.ipam_type == ""
    assert load(isDefaultGateway=True).is_gateway  # implies isGateway


def test_mac_priority_and_normalisation() -> None:
    assert load("MAC=02:00:00:00:00:01").mac == "02:00:00:00:00:01"
    assert load("MAC=02:00:00:00:00:01", args={"cni": {"mac": "02-00-00-00-00-AA"}}).mac == (
        "02:00:00:00:00:aa"
    )
    got = load(
        "MAC=02:00:00:00:00:01",
        args={"cni": {"mac": "02:00:00:00:00:02"}},
        runtimeConfig={"mac": "02:00:00:00:00:03"},
    )
    assert got.mac == "02:00:00:00:00:03"


@pytest.mark.parametrize(
    ("fields", "cni_args", "code", "needle"),
    [
        ({"hairpinMode": True, "promiscMode": True}, "", 7, "hairpinMode"),
        ({"vlan": -1}, "", 7, "vlan"),
        ({"vlan": 3, "vlanTrunk": [{"id": 4}]}, "", 7, "vlanTrunk"),
        ({"mtu": 70000}, "", 7, "mtu"),
        ({"mtu": 1500.0}, "", 7, "mtu"),
        ({"ipMasqBackend": "pf"}, "", 7, "ipMasqBackend"),
        ({"bridge": "x" * 16}, "", 7, "bridge"),
        ({"disableContainerInterface": True, "ipam": {"type": "x"}}, "", 7, "ipam"),
        ({"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}}, "", 7, "runtimeConfig.mac"),
        ({}, "MAC=nonsense", 4, "CNI_ARGS MAC"),
        ({}, "IP=10.0.0.1", 4, "CNI_ARGS"),  # the bridge alone does not know IP
    ],
)
def test_rejections_name_the_field(
    fields: dict[str, Any], cni_args: str, code: int, needle: str
) -> None:
    with pytest.raises(CniError) as info:
        load(cni_args, **fields)
    assert info.value.code == code and needle in info.value.msg


def test_in_process_ipam_lets_the_bridge_accept_ip() -> None:
    conf = bridge_config.load({"name": "n"}, "IP=10.0.0.1", ("IP",))
    assert conf.mac == ""


def test_vlan_trunk_expansion() -> None:
    assert bridge_config.trunk_vlans(None) == ()
    trunks = [
        bridge_config.VlanTrunkConf.model_validate({"minID": 10, "maxID": 12}),
        bridge_config.VlanTrunkConf.model_validate({"id": 11}),
        bridge_config.VlanTrunkConf.model_validate({"id": 400}),
    ]
    assert bridge_config.trunk_vlans(trunks) == (10, 11, 12, 400)
    assert load(vlanTrunk=[{"id": 5}]).vlan_filtering


def test_case_insensitive_keys() -> None:
    conf = load(ISGATEWAY=True, Bridge="br9", ipMASQ=True)
    assert conf.is_gateway and conf.bridge == "br9" and conf.raw.ip_masq


@pytest.mark.parametrize("mac", ["02:00:00:00:00:02\n", "02-00-00-00-00-02\r\n"])
def test_a_mac_with_a_trailing_newline_is_refused(mac: str) -> None:
    with pytest.raises(CniError) as raised:
        load(args={"cni": {"mac": mac}})
    assert raised.value.code == 7, raised.value
    assert "mac" in raised.value.msg
