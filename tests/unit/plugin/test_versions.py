from __future__ import annotations

import pytest

from node_plugin.cni import versions
from node_plugin.cni.errors import CniError


def test_missing_version_means_0_1_0() -> None:
    assert versions.effective_version({}) == "0.1.0"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"cniVersion": "0.3.1"}, "0.3.1"),
        ({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0"]}, "1.1.0"),
        ({"cniVersion": "1.0.0", "cniVersions": ["5.0.0"]}, "1.0.0"),
        ({"cniVersions": ["0.3.1", "1.0.0", "7.0.0"]}, "1.0.0"),
    ],
)
def test_effective_version(config: dict[str, object], expected: str) -> None:
    assert versions.effective_version(config) == expected


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"cniVersion": "2.0.0"}, 1),
        ({"cniVersions": ["3.0.0"]}, 1),
        ({"cniVersion": "one"}, 6),
        ({"cniVersion": 1}, 6),
        ({"cniVersion": "1.0.0", "cniVersions": "1.1.0"}, 6),
    ],
)
def test_effective_version_errors(config: dict[str, object], code: int) -> None:
    with pytest.raises(CniError) as info:
        versions.effective_version(config)
    assert info.value.code == code


@pytest.mark.parametrize(
    ("verb", "version", "allowed"),
    [
        ("CHECK", "0.3.1", False),
        ("CHECK", "0.4.0", True),
        ("GC", "1.0.0", False),
        ("GC", "1.1.0", True),
        ("STATUS", "1.0.0", False),
        ("ADD", "0.1.0", True),
    ],
)
def test_verb_minimums(verb: str, version: str, allowed: bool) -> None:
    if allowed:
        versions.check_verb_allowed(verb, version)
    else:
        with pytest.raises(CniError) as info:
            versions.check_verb_allowed(verb, version)
        assert info.value.code == 1 and verb in info.value.msg


@pytest.mark.parametrize("version", ["1.0.0\n", "1.1.0\n", "0.4.0\r\n"])
def test_a_version_with_a_trailing_newline_is_unparsable(version: str) -> None:
    with pytest.raises(CniError) as raised:
        versions.effective_version({"cniVersion": version})
    assert raised.value.code == 6, raised.value
    with pytest.raises(CniError) as raised:
        versions.effective_version({"cniVersion": "1.0.0", "cniVersions": [version]})
    assert raised.value.code == 6, raised.value
