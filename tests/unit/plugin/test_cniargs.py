from __future__ import annotations

import pytest

from node_plugin.cni import cniargs
from node_plugin.cni.errors import CniError


def test_known_keys_are_returned() -> None:
    assert cniargs.parse("IP=10.0.0.5;MAC=aa:bb:cc:dd:ee:ff", ("IP", "MAC")) == {
        "IP": "10.0.0.5",
        "MAC": "aa:bb:cc:dd:ee:ff",
    }
    assert cniargs.parse("", ("IP",)) == {}


def test_unknown_key_is_an_env_error_unless_ignored() -> None:
    with pytest.raises(CniError) as info:
        cniargs.parse("K8S_POD_NAME=x;IP=1.2.3.4", ("IP",))
    assert info.value.code == 4 and "CNI_ARGS" in info.value.msg
    got = cniargs.parse("IgnoreUnknown=1;K8S_POD_NAME=x;IP=1.2.3.4", ("IP",))
    assert got == {"IP": "1.2.3.4"}
    assert cniargs.parse("K8S_POD_NAME=x;IgnoreUnknown=true", ()) == {}


@pytest.mark.parametrize("raw", ["IP", "=x", "IgnoreUnknown=maybe"])
def test_malformed(raw: str) -> None:
    with pytest.raises(CniError) as info:
        cniargs.parse(raw, ("IP",))
    assert info.value.code == 4


def test_keys_are_case_sensitive_like_the_reference() -> None:
    with pytest.raises(CniError):
        cniargs.parse("ip=1.2.3.4", ("IP",))
