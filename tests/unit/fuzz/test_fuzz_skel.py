"""Fuzzing the CNI protocol layer (skel): environment, stdin, the config parsers behind it.

Property: whatever the runtime sends, the answer is exit 0 with a JSON result (or nothing),
or exit 1 with a CNI error object whose code is a spec or cniwarden code that names the
problem; never an exception, never 999 (an internal error is a traceback in disguise).
The plugin modules are replaced by stub_plugin, which parses exactly what the real ones
parse and touches nothing.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_plugin.cni import errors, skel
from node_plugin.cni.request import BRIDGE, HOST_LOCAL, CniRequest
from tests.unit.fuzz.budget import budget

pytestmark = pytest.mark.fuzz

STUB = "tests.unit.fuzz.stub_plugin"
KNOWN_CODES = {
    value
    for name, value in vars(errors).items()
    if name.isupper() and isinstance(value, int) and value != errors.INTERNAL
}

# Text as a runtime's environment can carry it: any Unicode, and bytes that are not UTF-8
# (they reach us as surrogates, like os.environ and the server decode them).
env_text = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40).map(os.fsdecode),
    st.sampled_from(["", "ctr1", "eth0", "pod1\n", "a" * 300, "-x", ".", "..", "e:1"]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

VALID_BRIDGE: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "name": "net",
    "type": "cniwarden-bridge",
    "bridge": "cni0",
    "isGateway": True,
    "ipMasq": True,
    "ipam": {
        "type": "cniwarden-host-local",
        "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/nonexistent/cni",
    },
    "prevResult": {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.1.0.2/24", "interface": 0}],
    },
}
FIELDS = [
    "cniVersion", "cniVersions", "name", "type", "bridge", "isGateway", "isDefaultGateway",
    "ipMasq", "ipMasqBackend", "mtu", "hairpinMode", "promiscMode", "vlan", "vlanTrunk",
    "preserveDefaultVlan", "macspoofchk", "enabledad", "disableContainerInterface",
    "portIsolation", "args", "runtimeConfig", "prevResult", "ipam", "Bridge", "IPAM",
    "cni.dev/valid-attachments",
]  # fmt: skip
IPAM_FIELDS = ["type", "subnet", "ranges", "routes", "dataDir", "resolvConf", "rangeStart"]


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with some fields (top level and ipam) replaced by anything JSON."""
    config: dict[str, Any] = json.loads(json.dumps(VALID_BRIDGE))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            config.pop(key, None)
        else:
            config[key] = draw(json_values)
    if isinstance(config.get("ipam"), dict):
        for key in draw(st.lists(st.sampled_from(IPAM_FIELDS), max_size=3)):
            config["ipam"][key] = draw(json_values)
    return config


stdins = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_configs().map(lambda c: json.dumps(c).encode()),
    st.integers(1, 5000).map(lambda n: b'{"x":' + b"[" * n + b"]" * n + b"}"),
)


@st.composite
def requests(draw: st.DrawFn) -> CniRequest:
    env = {
        "CNI_COMMAND": draw(
            st.one_of(st.sampled_from([*skel.COMMANDS, "", "add", "BOGUS"]), env_text)
        ),
        "CNI_CONTAINERID": draw(env_text),
        "CNI_NETNS": draw(st.sampled_from(["", "/nonexistent/netns", "/proc/self/ns/mnt"])),
        "CNI_IFNAME": draw(env_text),
        "CNI_ARGS": draw(st.one_of(env_text, cni_args())),
        "CNI_PATH": draw(st.sampled_from(["", "/nonexistent/bin"])),
    }
    dropped = draw(st.lists(st.sampled_from(sorted(env)), max_size=3))
    env = {k: v for k, v in env.items() if k not in dropped or k == "CNI_COMMAND"}
    return CniRequest(draw(st.sampled_from([BRIDGE, HOST_LOCAL])), env, draw(stdins))


def cni_args() -> st.SearchStrategy[str]:
    keys = st.sampled_from(["IgnoreUnknown", "MAC", "IP", "K8S_POD_NAME", "", "mac", "X"])
    pairs = st.tuples(keys, env_text).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.lists(st.one_of(pairs, env_text), max_size=4).map(";".join)


def assert_spec_answer(exit_code: int, stdout: bytes) -> None:
    assert exit_code in (0, 1), exit_code
    if exit_code == 0:
        if stdout:
            json.loads(stdout)
        return
    body = json.loads(stdout)
    assert set(body) <= {"cniVersion", "code", "msg", "details"}, body
    assert body["code"] in KNOWN_CODES, body
    assert isinstance(body["msg"], str) and body["msg"], body


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skel, "_MODULES", {BRIDGE: STUB, HOST_LOCAL: STUB})


@budget(400)
@given(request=requests())
def test_every_request_gets_a_spec_answer(stubbed: None, request: CniRequest) -> None:
    response = skel.dispatch(request)
    assert_spec_answer(response.exit_code, response.stdout)


@budget(300)
@given(config=mutated_configs(), command=st.sampled_from(["ADD", "CHECK", "DEL", "GC"]))
def test_every_mutated_config_gets_a_spec_answer(
    stubbed: None, config: dict[str, Any], command: str
) -> None:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": "/nonexistent/netns",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent/bin",
    }
    response = skel.dispatch(CniRequest(BRIDGE, env, json.dumps(config).encode()))
    assert_spec_answer(response.exit_code, response.stdout)
