"""The controller's views over its caches: selection, spec checks, status, and
when a deletion may complete. No API calls (the client is made on first use)."""

import time
from typing import Any

import pytest
from cni_operator.api import BinarySourcePolicy, check_url_prefix, url_under_prefix
from cni_operator.controller import Controller, ControllerSettings
from cni_operator.kube_time import now_iso


def node(name: str, cidr: str | None = "10.1.0.0/24", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr] if cidr else []},
    }


def network(generation: int = 1, **spec: Any) -> dict[str, Any]:
    body = {
        "priority": 10,
        "plugins": [
            {
                "type": "bridge",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
    }
    body.update(spec)
    return {"metadata": {"name": "net", "generation": generation}, "spec": body}


def controller() -> Controller:
    c = Controller(ControllerSettings(stale_agent_seconds=60))
    c.nodes = {
        "a": node("a", pool="x"),
        "b": node("b", pool="y"),
        "c": node("c", cidr=None, pool="x"),
    }
    return c


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_selection_and_render_errors_per_node() -> None:
    c = controller()
    check = c.check_spec("net", network(nodeSelector={"pool": "x"}))
    assert check.selected == ["a", "c"]
    assert check.problem and "node c has no spec.podCIDRs" in check.problem
    assert c.check_spec("net", network(priority=300)).error


def test_status_from_reports_and_stale_agents() -> None:
    c = controller()
    applied = {
        "networks": [
            {"name": "net", "state": "Applied", "appliedGeneration": 1, "desiredGeneration": 1}
        ]
    }
    c.reports = {
        "a": {**applied, "heartbeatTime": now_iso()},
        "b": {**applied, "heartbeatTime": now_iso()},
    }
    body = network(nodeSelector={"pool": "x"})
    body["spec"]["nodeSelector"] = {}
    c.nodes.pop("c")
    status = c.compute_status("net", body)
    assert conditions(status)["Ready"]["status"] == "True"
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    c.reports["b"]["heartbeatTime"] = old
    status = c.compute_status("net", body)
    assert conditions(status)["Ready"]["status"] == "False"
    assert "no agent report from b" in conditions(status)["Degraded"]["message"]


def test_deletion_waits_only_for_live_nodes_with_our_files() -> None:
    c = controller()
    beat = now_iso()
    c.reports = {
        "a": {"heartbeatTime": beat, "managedFiles": [{"network": "net"}]},
        "b": {"heartbeatTime": beat, "quarantined": [{"network": "net"}]},
        "c": {"heartbeatTime": beat, "managedFiles": [{"network": "other"}]},
        "gone": {"heartbeatTime": beat, "managedFiles": [{"network": "net"}]},
    }
    assert c.nodes_not_clean("net") == ["a", "b"]
    c.reports["a"]["heartbeatTime"] = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600)
    )
    assert c.nodes_not_clean("net") == ["b"]


def test_a_heartbeat_alone_re_aggregates_only_a_stale_report() -> None:
    c = controller()
    c.networks = {"net": network()}
    report = {"networks": [{"name": "net", "state": "Applied"}], "heartbeatTime": now_iso()}
    c.on_report("a", dict(report))
    assert c.dirty == {"net"}
    c.dirty.clear()
    c.on_report("a", {**report, "heartbeatTime": now_iso()})
    assert c.dirty == set()
    c.on_report("a", {**report, "healthy": False})
    assert c.dirty == {"net"}
    c.dirty.clear()
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    c.on_report("b", {**report, "heartbeatTime": old})
    c.dirty.clear()
    c.on_report("b", {**report, "heartbeatTime": now_iso()})
    assert c.dirty == {"net"}
    c.dirty.clear()
    c.on_report("b", None)
    assert c.dirty == {"net"} and "b" not in c.reports


def stamp(seconds_from_now: float, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return time.strftime(fmt, time.gmtime(time.time() + seconds_from_now))


def test_a_heartbeat_that_cannot_vouch_is_stale() -> None:
    """Issue 11 item 11: missing, unparsable and future heartbeats are stale, so one
    bad agent cannot hold up every deletion; RFC 3339 fractions and offsets parse."""
    c = controller()
    fresh = now_iso()
    assert not c.is_stale({"heartbeatTime": fresh})
    assert c.is_stale({})
    assert c.is_stale({"heartbeatTime": ""})
    assert c.is_stale({"heartbeatTime": "yesterday"})
    assert c.is_stale({"heartbeatTime": 1700000000})
    assert c.is_stale({"heartbeatTime": stamp(0, "%Y-%m-%dT%H:%M:%S")}), "no offset"
    assert c.is_stale({"heartbeatTime": stamp(3600)}), "an hour in the future"
    assert c.is_stale({"heartbeatTime": "2999-01-01T00:00:00Z"})
    assert not c.is_stale({"heartbeatTime": stamp(5)}), "a few seconds of clock skew"
    fraction = stamp(-1).replace("Z", ".123456789Z")
    assert not c.is_stale({"heartbeatTime": fraction})
    assert c.is_stale({"heartbeatTime": stamp(-600).replace("Z", ".5Z")})
    offset = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 7200)) + "+02:00"
    assert not c.is_stale({"heartbeatTime": offset})
    assert c.is_stale({"heartbeatTime": "2026-02-30T00:00:00Z"}), "no such day"


def test_a_report_without_a_heartbeat_holds_no_deletion() -> None:
    c = controller()
    c.reports = {"a": {"managedFiles": [{"network": "net"}]}}
    assert c.nodes_not_clean("net") == []
    c.reports["a"]["heartbeatTime"] = "2999-01-01T00:00:00Z"
    assert c.nodes_not_clean("net") == []
    c.reports["a"]["heartbeatTime"] = now_iso().replace("Z", ".25Z")
    assert c.nodes_not_clean("net") == ["a"]


def test_a_url_outside_the_allowed_prefixes_is_an_invalid_spec() -> None:
    """The operator's --binary-url-prefix: a clear condition names the URL and the list."""
    c = controller()
    c.settings = ControllerSettings(
        stale_agent_seconds=60,
        sources=BinarySourcePolicy(("https://github.com/containernetworking/",)),
    )
    allowed = "https://github.com/containernetworking/plugins/releases/download/v1/bridge"
    for url, ok in (
        (allowed, True),
        ("https://github.com/containernetworking-evil/x", False),
        ("https://evil.example/containernetworking/x", False),
    ):
        binary = {"name": "bridge", "sha256": "a" * 64, "source": {"url": url}}
        body = network(binaries=[binary], nodeSelector={"pool": "y"})
        status = c.compute_status("net", body)
        ready = conditions(status)["Ready"]
        if ok:
            assert ready["reason"] != "InvalidSpec", ready
            continue
        assert ready["reason"] == "InvalidSpec"
        assert (
            f"spec.binaries[0].source.url: {url} is not under an allowed prefix"
            in (ready["message"])
        )
        assert (
            "this cluster allows only: https://github.com/containernetworking/"
            in (ready["message"])
        )
        assert conditions(status)["Degraded"]["reason"] == "InvalidSpec"


def test_url_prefixes_hold_against_lookalikes() -> None:
    prefix = "https://h.example/org/"
    inside = ["https://h.example/org/x", "HTTPS://H.EXAMPLE/org/a/b", "https://h.example/org/"]
    outside = [
        "http://h.example/org/x",
        "https://h.example:8443/org/x",
        "https://h.example/organization/x",
        "https://h.example/org/../other/x",
        "https://h.example/org/%2e%2e/other/x",
        "https://h.example.evil/org/x",
        "https://h.example@evil.example/org/x",
        "https://user@h.example/org/x",
        "https://h.example:bad/org/x",
    ]
    assert all(url_under_prefix(u, prefix) for u in inside)
    assert not [u for u in outside if url_under_prefix(u, prefix)]
    for bad in ("https://h.example/org", "ftp://h/x/", "https:///x/", "https://h/x/?q=1"):
        with pytest.raises(ValueError):
            check_url_prefix(bad)
    assert check_url_prefix(prefix) == prefix
