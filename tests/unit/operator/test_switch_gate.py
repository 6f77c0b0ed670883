"""The unsafe-switch decision."""

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
from cni_operator.api import NetworkSpec, SpecError, parse_spec
from cni_operator.switch_gate import acknowledged, classify, decide

BASE: dict[str, Any] = {
    "priority": 10,
    "cniVersion": "1.0.0",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cw0",
            "mtu": 1500,
            "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]},
        }
    ],
}


def changed(mutate) -> Any:  # type: ignore[no-untyped-def]
    new = copy.deepcopy(BASE)
    mutate(new)
    return classify(parse_spec(BASE), parse_spec(new))


def test_mtu_hairpin_and_routes_are_safe() -> None:
    def edit(s: dict[str, Any]) -> None:
        s["plugins"][0]["mtu"] = 9000
        s["plugins"][0]["hairpinMode"] = True
        s["plugins"][0]["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}]

    change = changed(edit)
    assert change.is_safe
    assert change.changed == ["plugins[0].hairpinMode", "plugins[0].mtu", "plugins[0].ipam.routes"]


def test_appending_a_chained_plugin_is_safe_removing_is_not() -> None:
    change = changed(lambda s: s["plugins"].append({"type": "portmap"}))
    assert change.is_safe and change.changed == ["plugins[1] (appended portmap)"]
    bigger = copy.deepcopy(BASE)
    bigger["plugins"].append({"type": "portmap"})
    removal = classify(parse_spec(bigger), parse_spec(BASE))
    assert removal.unsafe == ["plugins[1] (removed portmap)"]


def test_ipam_subnet_bridge_and_type_are_unsafe() -> None:
    ipam = changed(lambda s: s["plugins"][0]["ipam"].update(ranges=[[{"subnet": "10.2.0.0/24"}]]))
    assert ipam.unsafe == ["plugins[0].ipam.ranges"]
    bridge = changed(lambda s: s["plugins"][0].update(bridge="cw1"))
    assert bridge.unsafe == ["plugins[0].bridge"]
    kind = changed(lambda s: s["plugins"][0].update(type="cniwarden-bridge"))
    assert kind.unsafe == ["plugins[0].type"]
    store = changed(lambda s: s["plugins"][0]["ipam"].update(dataDir="/run/x"))
    assert store.unsafe == ["plugins[0].ipam.dataDir"]


def test_priority_is_judged_by_who_wins_not_here() -> None:
    change = changed(lambda s: s.update(priority=1))
    assert change.is_safe and change.changed == ["priority"]


def test_decide() -> None:
    assert decide([], 5, False, "n").allowed
    assert decide(["plugins[0].bridge"], 0, False, "n").allowed
    held = decide(["plugins[0].bridge"], 2, False, "podnet")
    assert not held.allowed
    assert "2 attachment(s) of network podnet" in held.reason
    assert "cniwarden.io/proceed-generation" in held.reason
    assert decide(["plugins[0].bridge"], 2, True, "n").allowed


def test_acknowledgement_is_per_generation_and_node() -> None:
    ann = {"cniwarden.io/proceed-generation": "4", "cniwarden.io/proceed-nodes": "a, b"}
    assert acknowledged(ann, 4, "a")
    assert acknowledged(ann, 4, "b")
    assert not acknowledged(ann, 4, "c")
    assert not acknowledged(ann, 5, "a")  # a later change needs a new acknowledgement
    assert acknowledged({**ann, "cniwarden.io/proceed-nodes": "*"}, 4, "zzz")
    assert not acknowledged({"cniwarden.io/proceed-nodes": "a"}, 4, "a")
    assert not acknowledged({**ann, "cniwarden.io/proceed-generation": "x"}, 4, "a")


def respelled(mutate) -> Any:  # type: ignore[no-untyped-def]
    """Like `changed`, but taking the specs as an agent's manifest holds them (no
    refusal of other spellings: an older agent may have applied one)."""
    new = copy.deepcopy(BASE)
    mutate(new)
    return classify(NetworkSpec.model_validate(BASE), NetworkSpec.model_validate(new))


def test_a_new_spec_spells_the_keys_the_checks_look_at_exactly() -> None:
    mutations: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
        ("plugins[0].IPAM", lambda p: p.update(IPAM=p.pop("ipam"))),
        ("plugins[0].Type", lambda p: p.update(Type="x")),
        ("plugins[0].ipam.Ranges", lambda p: p["ipam"].update(Ranges=p["ipam"].pop("ranges"))),
        (
            "plugins[0].ipam.ranges[0][0].SubNet",
            lambda p: p["ipam"]["ranges"][0][0].update(SubNet="x"),
        ),
    ]
    for where, mutate in mutations:
        spec = copy.deepcopy(BASE)
        mutate(spec["plugins"][0])
        with pytest.raises(SpecError, match=re.escape(where) + ": write"):
            parse_spec(spec)


def test_spelling_never_changes_the_verdict() -> None:
    """Issue 11 item 6: the plugins read keys case-insensitively (Go's rule), so the
    gate does too: `Bridge` and `IPAM` changes are as unsafe as `bridge` and `ipam`."""

    def bridge_spelled(s: dict[str, Any]) -> None:
        plugin = s["plugins"][0]
        del plugin["bridge"]
        plugin["Bridge"] = "cw1"

    assert respelled(bridge_spelled).unsafe == ["plugins[0].bridge"]

    def ipam_spelled(s: dict[str, Any]) -> None:
        plugin = s["plugins"][0]
        ipam = plugin.pop("ipam")
        plugin["IPAM"] = {**ipam, "ranges": [[{"subnet": "10.9.0.0/24"}]]}

    assert respelled(ipam_spelled).unsafe == ["plugins[0].ipam.ranges"]

    def range_key_spelled(s: dict[str, Any]) -> None:
        s["plugins"][0]["ipam"]["Ranges"] = s["plugins"][0]["ipam"].pop("ranges")
        s["plugins"][0]["ipam"]["Ranges"][0][0] = {"Subnet": "10.9.0.0/24"}

    assert respelled(range_key_spelled).unsafe == ["plugins[0].ipam.ranges"]

    def masq_spelled(s: dict[str, Any]) -> None:
        s["plugins"][0]["IPMASQ"] = True

    assert respelled(masq_spelled).unsafe == ["plugins[0].ipMasq"]


def test_a_respelling_alone_is_no_change_and_duplicates_are_seen() -> None:
    def same_values(s: dict[str, Any]) -> None:
        plugin = s["plugins"][0]
        plugin["BRIDGE"] = plugin.pop("bridge")
        plugin["Ipam"] = plugin.pop("ipam")
        plugin["Ipam"]["Ranges"] = [[{"SUBNET": "10.1.0.0/24"}]]
        del plugin["Ipam"]["ranges"]

    assert respelled(same_values).changed == []

    def shadow_key(s: dict[str, Any]) -> None:
        # Go's decoder (the reference plugins) takes the last spelling, ours the exact one.
        s["plugins"][0]["Bridge"] = "cw9"

    assert respelled(shadow_key).unsafe == ["plugins[0].bridge"]
