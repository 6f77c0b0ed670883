from __future__ import annotations

from typing import Any

import pytest

from node_plugin.cni.errors import CniError
from node_plugin.ipam import config as hostlocal_config


def load(ipam: dict[str, Any], version: str = "1.1.0", cni_args: str = "", **top: Any) -> Any:
    config = {"cniVersion": version, "name": "net", "ipam": {"type": "x", **ipam}, **top}
    return hostlocal_config.load(config, cni_args, version)


def test_runtime_ranges_come_first_then_legacy_then_ranges() -> None:
    conf = load(
        {"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.2.0.0/24"}]]},
        runtimeConfig={"ipRanges": [[{"subnet": "10.3.0.0/24"}]]},
    )
    assert [str(s.ranges[0].subnet) for s in conf.range_sets] == [
        "10.3.0.0/24",
        "10.1.0.0/24",
        "10.2.0.0/24",
    ]
    assert conf.data_dir == "/var/lib/cni/networks"


def test_two_v4_sets_need_0_3_0() -> None:
    ranges = [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]
    assert len(load({"ranges": ranges}, "0.3.0").range_sets) == 2
    with pytest.raises(CniError) as info:
        load({"ranges": ranges}, "0.2.0")
    assert info.value.code == 7


def test_strict_types_name_the_field() -> None:
    with pytest.raises(CniError) as info:
        load({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0", "gw": 7}]})
    assert "ipam.routes[0].gw" in info.value.msg
    with pytest.raises(CniError) as info:
        load({"subnet": "10.1.0.0/24"}, runtimeConfig={"ips": ["x"]})
    assert "runtimeConfig.ips[0]" in info.value.msg


def test_case_insensitive_keys_prefer_exact_match() -> None:
    conf = load({"SUBNET": "10.1.0.0/24", "subnet": "10.2.0.0/24"})
    assert str(conf.range_sets[0].ranges[0].subnet) == "10.2.0.0/24"
    conf = load({"Subnet": "10.1.0.0/24", "rangestart": "10.1.0.9"})
    assert str(conf.range_sets[0].ranges[0].start) == "10.1.0.9"


def test_null_means_absent_like_go() -> None:
    conf = load({"subnet": "10.1.0.0/24", "gateway": None, "routes": None})
    assert str(conf.range_sets[0].ranges[0].gateway) == "10.1.0.1"


def test_requested_addresses_dedupe_and_args_win() -> None:
    conf = load(
        {"subnet": "10.1.0.0/24"},
        cni_args="IP=10.1.0.5",
        args={"cni": {"ips": ["10.1.0.5/24", "fd00::5"]}},
        runtimeConfig={"ips": ["10.1.0.9"]},
    )
    assert [str(i) for i in conf.requested] == ["10.1.0.5", "fd00::5"]


def test_range_from_file(tmp_path: Any) -> None:
    f = tmp_path / "range.json"
    f.write_text('{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.100"}')
    conf = load({"rangeFromFile": str(f)})
    assert str(conf.range_sets[0].ranges[0].start) == "10.9.0.100"
    with pytest.raises(CniError) as info:
        load({"rangeFromFile": str(tmp_path / "missing.json")})
    assert "ipam.rangeFromFile" in info.value.msg
