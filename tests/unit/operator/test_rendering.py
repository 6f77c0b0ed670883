"""Rendering: spec + Node -> conflist, with usePodCIDR filled in per family."""

import json

import pytest
from cni_operator.api import SpecError, parse_spec
from cni_operator.rendering import NodeFacts, check_against_binaries, render, selects


def bridge_spec(**ipam_overrides: object) -> dict[str, object]:
    ipam = {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]], **ipam_overrides}
    return {
        "priority": 5,
        "cniVersion": "1.0.0",
        "plugins": [
            {"type": "bridge", "bridge": "cw0", "isGateway": True, "ipam": ipam},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


DUAL = NodeFacts("n1", pod_cidrs=("10.244.1.0/24", "fd00:10:244:1::/64"))


def test_file_name_is_two_digit_priority_and_name() -> None:
    rendered = render("podnet", parse_spec(bridge_spec()), DUAL)
    assert rendered.file_name == "05-podnet.conflist"


def test_use_pod_cidr_becomes_one_range_set_per_family() -> None:
    rendered = render("podnet", parse_spec(bridge_spec()), DUAL)
    ranges = rendered.conflist["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    # The bytes on disk are exactly this JSON, and other keys pass through untouched.
    on_disk = json.loads(rendered.content)
    assert on_disk == rendered.conflist
    assert on_disk["name"] == "podnet"
    assert on_disk["plugins"][1] == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_extra_families_of_one_kind_are_ignored() -> None:
    node = NodeFacts("n1", pod_cidrs=("10.244.1.0/24", "10.245.1.0/24"))
    rendered = render("podnet", parse_spec(bridge_spec()), node)
    assert rendered.conflist["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]


def test_legacy_top_level_subnet_is_substituted() -> None:
    spec = bridge_spec()
    spec["plugins"][0]["ipam"] = {"type": "host-local", "subnet": "usePodCIDR"}  # type: ignore[index]
    rendered = render("podnet", parse_spec(spec), NodeFacts("n", pod_cidrs=("10.1.0.0/24",)))
    ipam = rendered.conflist["plugins"][0]["ipam"]
    assert "subnet" not in ipam
    assert ipam["ranges"] == [[{"subnet": "10.1.0.0/24"}]]


def test_fixed_ranges_are_kept_next_to_pod_cidr_sets() -> None:
    spec = bridge_spec(ranges=[[{"subnet": "usePodCIDR"}], [{"subnet": "192.168.7.0/24"}]])
    rendered = render("podnet", parse_spec(spec), NodeFacts("n", pod_cidrs=("10.1.0.0/24",)))
    assert rendered.conflist["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": "10.1.0.0/24"}],
        [{"subnet": "192.168.7.0/24"}],
    ]


def test_node_without_pod_cidrs_is_a_clear_error() -> None:
    with pytest.raises(SpecError, match=r"node n1 has no spec.podCIDRs"):
        render("podnet", parse_spec(bridge_spec()), NodeFacts("n1"))


def test_gateway_with_use_pod_cidr_is_refused() -> None:
    spec = bridge_spec(ranges=[[{"subnet": "usePodCIDR", "gateway": "10.0.0.1"}]])
    with pytest.raises(SpecError, match="gateway cannot be combined"):
        render("podnet", parse_spec(spec), DUAL)


def test_rendering_is_deterministic() -> None:
    spec = parse_spec(bridge_spec())
    assert render("podnet", spec, DUAL).content == render("podnet", spec, DUAL).content


def test_node_facts_from_node_object() -> None:
    node = {
        "metadata": {"name": "w1", "labels": {"role": "x"}},
        "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]},
    }
    facts = NodeFacts.from_node(node)
    assert facts == NodeFacts("w1", {"role": "x"}, ("10.0.0.0/24", "fd00::/64"))
    legacy = NodeFacts.from_node({"metadata": {"name": "w2"}, "spec": {"podCIDR": "10.0.1.0/24"}})
    assert legacy.pod_cidrs == ("10.0.1.0/24",)


def test_selects_is_equality_on_every_key() -> None:
    assert selects({}, {"a": "b"})
    assert selects({"a": "b"}, {"a": "b", "c": "d"})
    assert not selects({"a": "b"}, {"a": "c"})
    assert not selects({"a": "b"}, {})


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"spec.priority"):
        parse_spec({"priority": 100, "plugins": [{"type": "bridge"}]})
    with pytest.raises(SpecError, match=r"plugins\[0\].type"):
        parse_spec({"priority": 1, "plugins": [{"type": "../bin/sh"}]})
    with pytest.raises(SpecError, match=r"spec.plugins"):
        parse_spec({"priority": 1, "plugins": []})
    with pytest.raises(SpecError, match="cniVersion"):
        parse_spec({"priority": 1, "cniVersion": "2.0.0", "plugins": [{"type": "bridge"}]})


def test_check_against_binaries_names_missing_and_incompatible() -> None:
    rendered = render("podnet", parse_spec(bridge_spec()), DUAL)
    problems = check_against_binaries(
        rendered,
        {"bridge": ["0.4.0", "1.0.0"], "host-local": ["0.3.1"], "portmap": None},
    )
    assert problems == [
        "plugin binary 'host-local' supports CNI versions 0.3.1 but the config asks for 1.0.0",
        "plugin binary 'portmap' did not answer the CNI VERSION command",
    ]
    assert check_against_binaries(rendered, {"bridge": ["1.0.0"]}) == [
        "plugin binary 'host-local' is not installed in the CNI bin dir",
        "plugin binary 'portmap' is not installed in the CNI bin dir",
    ]
