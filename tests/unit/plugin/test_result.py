from __future__ import annotations

import ipaddress

import pytest

from node_plugin.cni.errors import CniError
from node_plugin.cni.result import DNS, Interface, IPConfig, Result, Route


def sample() -> Result:
    return Result(
        interfaces=[
            Interface("br0", mac="aa:bb:cc:dd:ee:01"),
            Interface("veth1", mac="aa:bb:cc:dd:ee:02", mtu=1400),
            Interface("eth0", mac="aa:bb:cc:dd:ee:03", sandbox="/run/netns/x", mtu=1400),
        ],
        ips=[
            IPConfig(ipaddress.ip_interface("10.0.0.5/24"), ipaddress.ip_address("10.0.0.1"), 2),
            IPConfig(ipaddress.ip_interface("fd00::5/64"), ipaddress.ip_address("fd00::1"), 2),
        ],
        routes=[
            Route(ipaddress.ip_interface("0.0.0.0/0"), ipaddress.ip_address("10.0.0.1"), mtu=1300),
            Route(ipaddress.ip_interface("::/0")),
        ],
        dns=DNS(nameservers=["10.0.0.10"], search=["svc"]),
    )


def test_current_version_keeps_everything() -> None:
    out = sample().to_json("1.1.0")
    assert out["interfaces"][1] == {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1400}
    assert out["ips"][0] == {"interface": 2, "address": "10.0.0.5/24", "gateway": "10.0.0.1"}
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1300}
    assert out["dns"] == {"nameservers": ["10.0.0.10"], "search": ["svc"]}


def test_1_0_0_drops_1_1_0_fields() -> None:
    out = sample().to_json("1.0.0")
    assert "mtu" not in out["interfaces"][1]
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.0.0.1"}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_0_3_and_0_4_carry_ip_versions(version: str) -> None:
    out = sample().to_json(version)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["cniVersion"] == version


def test_0_2_0_shape() -> None:
    out = sample().to_json("0.2.0")
    assert out["ip4"] == {
        "ip": "10.0.0.5/24",
        "gateway": "10.0.0.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
    }
    assert out["ip6"] == {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]}
    assert "interfaces" not in out


def test_0_2_0_cannot_carry_two_addresses_of_one_family() -> None:
    r = sample()
    r.ips.append(IPConfig(ipaddress.ip_interface("10.0.1.5/24")))
    with pytest.raises(CniError):
        r.to_json("0.1.0")


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_round_trip_through_every_version(version: str) -> None:
    original = sample()
    back = Result.from_json(original.to_json(version), version)
    assert [str(ip.address) for ip in back.ips] == ["10.0.0.5/24", "fd00::5/64"]
    assert [str(r.dst) for r in back.routes] == ["0.0.0.0/0", "::/0"]
    assert back.dns.nameservers == ["10.0.0.10"]
    if version >= "0.3.0":
        assert [i.name for i in back.interfaces] == ["br0", "veth1", "eth0"]
        assert back.ips[0].interface == 2


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"ips": [{"address": "10.0.0.5"}]}, "prevResult.ips[0].address"),
        ({"ips": "x"}, "prevResult.ips"),
        ({"routes": [{"dst": "0.0.0.0/0", "gw": 5}]}, "prevResult.routes[0].gw"),
        ({"interfaces": [{"name": 3}]}, "prevResult.interfaces[0].name"),
    ],
)
def test_bad_prev_result_is_a_config_error(data: dict[str, object], field: str) -> None:
    with pytest.raises(CniError) as info:
        Result.from_json(data, "1.0.0")
    assert info.value.code == 7 and field in info.value.msg
