"""The CRDs, checked offline: structural schema rules, CEL syntax, and what the
CEL rules decide on sample objects (the API server re-checks all of it in the
integration tests)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from cni_operator import api, noderoutes

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
CRDS = {
    doc["metadata"]["name"]: doc
    for doc in (yaml.safe_load(p.read_text()) for p in CRD_DIR.glob("*.yaml"))
}


def schema_of(name: str) -> dict[str, Any]:
    crd = CRDS[name]
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("name", sorted(CRDS))
def test_names_match_the_api_module(name: str) -> None:
    crd = CRDS[name]
    assert crd["spec"]["group"] == api.GROUP
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == api.VERSION
    if crd["spec"]["names"]["kind"] == noderoutes.KIND:
        # The controller's projection of the Nodes: all spec, no status (noderoutes.py).
        assert "subresources" not in version
        assert (noderoutes.GROUP, noderoutes.VERSION) == (api.GROUP, api.VERSION)
        assert crd["spec"]["names"]["plural"] == noderoutes.PLURAL
    else:
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["kind"] in (
            api.NETWORK_KIND,
            api.NODE_STATE_KIND,
            api.MIGRATION_KIND,
        )
    assert name == f"{crd['spec']['names']['plural']}.{api.GROUP}"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schema_is_structural(name: str) -> None:
    """The rules of a structural schema that a YAML typo breaks most often."""
    for path, node in walk(schema_of(name)):
        if not node.get("x-kubernetes-preserve-unknown-fields") and not node.get(
            "x-kubernetes-int-or-string"
        ):
            assert "type" in node, f"{name}{path}: every schema node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for forbidden in ("$ref", "definitions", "dependencies", "patternProperties"):
            assert forbidden not in node, f"{name}{path}: {forbidden} is not allowed"
        if node.get("type") == "array":
            assert "items" in node, f"{name}{path}: arrays need items"
        if path == ".metadata":
            assert set(node) <= {"type", "properties"}, "metadata may only be typed"


def cel_rules() -> Iterator[tuple[str, str, str]]:
    for name in sorted(CRDS):
        for path, node in walk(schema_of(name)):
            for rule in node.get("x-kubernetes-validations") or []:
                yield name, path, rule["rule"]


@pytest.mark.parametrize(("name", "path", "rule"), list(cel_rules()))
def test_cel_rules_parse(name: str, path: str, rule: str) -> None:
    celpy.Environment().compile(rule)


def cel(rule: str, **variables: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(rule))
    result = program.evaluate({k: json_to_cel(v) for k, v in variables.items()})
    return bool(result)


def rule_at(name: str, path: str, index: int = 0) -> str:
    for p, node in walk(schema_of(name)):
        if p == path:
            return str(node["x-kubernetes-validations"][index]["rule"])
    raise KeyError(path)


def test_use_pod_cidr_rule() -> None:
    rule = rule_at("cninetworks.cniwarden.io", ".spec.plugins[]")
    ok = {
        "type": "bridge",
        "ipam": {"ranges": [[{"subnet": "usePodCIDR"}], [{"subnet": "10.0.0.0/8"}]]},
    }
    assert cel(rule, self=ok)
    assert cel(rule, self={"type": "loopback"})
    crowded = {
        "type": "bridge",
        "ipam": {"ranges": [[{"subnet": "usePodCIDR"}, {"subnet": "10.0.0.0/8"}]]},
    }
    assert not cel(rule, self=crowded)
    gateway = {
        "type": "bridge",
        "ipam": {"ranges": [[{"subnet": "usePodCIDR", "gateway": "10.0.0.1"}]]},
    }
    assert not cel(rule, self=gateway)


def test_binary_source_rules() -> None:
    path = ".spec.binaries[].source"
    exactly_one = rule_at("cninetworks.cniwarden.io", path, 0)
    assert cel(exactly_one, self={"file": "/x"})
    assert not cel(exactly_one, self={"file": "/x", "url": "http://h/x"})
    assert not cel(exactly_one, self={})
    assert not cel(rule_at("cninetworks.cniwarden.io", path, 1), self={"url": "ftp://h/x"})
    assert not cel(rule_at("cninetworks.cniwarden.io", path, 2), self={"file": "rel/x"})


def test_network_name_transition_rules() -> None:
    immutable = rule_at("cninetworks.cniwarden.io", ".spec.networkName")
    assert cel(immutable, self="a", oldSelf="a")
    assert not cel(immutable, self="b", oldSelf="a")
    root = rule_at("cninetworks.cniwarden.io", "", 1)
    spec = {"priority": 1}
    assert cel(root, self={"spec": spec}, oldSelf={"spec": spec})
    assert not cel(root, self={"spec": {**spec, "networkName": "x"}}, oldSelf={"spec": spec})


def test_defaults_agree_with_the_model() -> None:
    spec = schema_of("cninetworks.cniwarden.io")["properties"]["spec"]["properties"]
    model = api.NetworkSpec.model_validate({"priority": 1, "plugins": [{"type": "x"}]})
    assert spec["cniVersion"]["default"] == model.cniVersion
    assert spec["shadowPolicy"]["default"] == model.shadowPolicy
    assert spec["cniVersion"]["enum"] == list(api.SUPPORTED_CNI_VERSIONS)


def test_cni_version_enum_is_the_plugins_list_from_conflist_on() -> None:
    """One source: node_plugin says which versions exist; the CRD offers those a
    conflist can carry (0.3.0 on), in the same order."""
    from node_plugin.cni import versions  # noqa: PLC0415

    spec = schema_of("cninetworks.cniwarden.io")["properties"]["spec"]["properties"]
    expected = [v for v in versions.SUPPORTED if versions.at_least(v, "0.3.0")]
    assert spec["cniVersion"]["enum"] == expected
    assert "1.1.0" in expected and "0.2.0" not in expected
