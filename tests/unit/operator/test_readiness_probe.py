"""The readiness probe's pure parts: when to probe, how its verdict joins STATUS's,
its identity (never a live pod, never a leak while it runs) and libcni's way of
running a conflist."""

from __future__ import annotations

import ipaddress
import json

import pytest
from cni_operator import libcni
from cni_operator.node import cniprobe
from cni_operator.pools import MIN_LEASE_GRACE_SECONDS, PoolLease, is_leaked
from cni_operator.readiness import (
    ProbeResult,
    Readiness,
    config_key,
    probe_due,
    probe_id,
    probe_started,
    stale_probe,
    with_probe,
)

READY = Readiness(True, ())
DOWN = Readiness(False, ("cniwarden-bridge STATUS: code 50: server down",))
KEY = config_key([("10-a.conflist", "ab" * 32)])


def result(ok: bool, at: float, key: str = KEY) -> ProbeResult:
    return ProbeResult(key, ok, at, 0.5, "ADD of 10-a.conflist failed" if not ok else "ok", "id")


def due(last: ProbeResult | None, base: Readiness, was_ready: bool, now: float) -> bool:
    return probe_due(last, KEY, base, base_was_ready=was_ready, now=now, interval=300.0, retry=10.0)


def test_probe_runs_at_first_verdict_on_change_on_recovery_and_on_the_intervals() -> None:
    assert due(None, READY, False, 0.0), "the first verdict probes"
    assert not due(None, DOWN, False, 0.0), "no probe while STATUS already says no"
    passed = result(True, 100.0)
    assert not due(passed, READY, True, 101.0), "not every tick"
    assert not due(passed, READY, True, 399.0)
    assert due(passed, READY, True, 400.0), "again after the interval"
    assert due(passed, READY, False, 101.0), "after a recovery, before untainting"
    other = result(True, 100.0, config_key([("10-a.conflist", "cd" * 32)]))
    assert due(other, READY, True, 101.0), "a new config in use is probed at once"
    failed = result(False, 100.0)
    assert not due(failed, READY, True, 105.0)
    assert due(failed, READY, True, 110.0), "a failure is retried sooner"
    off = probe_due(None, KEY, READY, base_was_ready=False, now=0, interval=0, retry=10)
    assert not off


def test_the_taint_stays_until_the_probe_of_this_very_config_passed() -> None:
    assert with_probe(DOWN, result(True, 0), KEY, True) == DOWN
    pending = with_probe(READY, None, KEY, True)
    assert not pending.ready and "not run yet" in pending.message
    stale_key = with_probe(READY, result(True, 0, "other@1"), KEY, True)
    assert not stale_key.ready
    failed = with_probe(READY, result(False, 0), KEY, True)
    assert not failed.ready and failed.message.startswith("probe ADD of 10-a.conflist failed")
    assert with_probe(READY, result(True, 0), KEY, True).ready
    assert with_probe(READY, None, KEY, False).ready, "probe off: STATUS's verdict"


def test_probe_identity_and_staleness() -> None:
    name = probe_id("node-a.example", 1_700_000_000.7, "0a1b")
    assert name == "cniwarden-probe-node-a.example-1700000000-0a1b"
    assert probe_started(name, "node-a.example") == 1_700_000_000
    assert probe_started(name, "node-a") is None, "another node's probe"
    assert probe_started("cni-1234", "node-a.example") is None, "a runtime's netns"
    budget = cniprobe.BUDGET_SECONDS
    assert not stale_probe(name, "node-a.example", 1_700_000_000 + budget - 1, budget)
    assert stale_probe(name, "node-a.example", 1_700_000_000 + budget + 2, budget)
    assert len(probe_id("n" * 253, 1e9, "abcdef01")) < 255, "a netns name is a file name"


def test_a_probe_lease_is_never_a_leak_while_it_runs_and_is_one_when_left_behind() -> None:
    # The probe (ADD + CHECK + DEL) ends within its budget, below the shortest grace.
    assert cniprobe.BUDGET_SECONDS + cniprobe.NETNS_SECONDS < MIN_LEASE_GRACE_SECONDS
    live_pods = frozenset({"a" * 64})  # the runtime never lists a probe
    ip = ipaddress.ip_address("10.0.0.5")
    owner = probe_id("node-a", 1e9, "0a1b")
    running = PoolLease(ip, owner, "eth0", cniprobe.BUDGET_SECONDS)
    assert not is_leaked(running, live_pods, MIN_LEASE_GRACE_SECONDS)
    left = PoolLease(ip, owner, "eth0", MIN_LEASE_GRACE_SECONDS)
    assert is_leaked(left, live_pods, MIN_LEASE_GRACE_SECONDS)


CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "net",
    "plugins": [
        {"type": "cniwarden-bridge", "bridge": "cw0", "ipam": {"type": "cniwarden-host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "prevResult": {"stale": 1}},
    ],
}


def test_libcni_chain_injects_name_version_and_prev_result() -> None:
    net = libcni.load(json.dumps(CONFLIST).encode(), "10-net.conflist")
    assert net.plugin_types() == ["cniwarden-bridge", "portmap"]
    assert net.checks and net.del_gets_prev_result
    first = json.loads(libcni.plugin_stdin(net, net.plugins[0], None))
    assert first["name"] == "net" and first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    second = json.loads(libcni.plugin_stdin(net, net.plugins[1], prev))
    assert second["prevResult"] == prev, "a stale prevResult in the file is replaced"
    old = libcni.load(json.dumps({**CONFLIST, "cniVersion": "0.3.1"}).encode(), "a.conflist")
    assert not old.checks and not old.del_gets_prev_result
    disabled = libcni.load(json.dumps({**CONFLIST, "disableCheck": True}).encode(), "a.conflist")
    assert not disabled.checks
    single = libcni.load(json.dumps({"name": "n", "type": "bridge"}).encode(), "10-n.conf")
    assert single.plugin_types() == ["bridge"] and single.cni_version == "0.1.0"
    env = libcni.environment("ADD", "cid", "/run/netns/x", "eth0", "/opt/cni/bin")
    assert env["CNI_CONTAINERID"] == "cid" and env["CNI_NETNS"] == "/run/netns/x"
    assert env["CNI_ARGS"].startswith("IgnoreUnknown=1;")


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"{", "a.conflist"),
        (b"[]", "a.conflist"),
        (b'{"name": "n", "plugins": []}', "a.conflist"),
        (b'{"name": "n", "plugins": [{"x": 1}]}', "a.conflist"),
        (b'{"plugins": [{"type": "x"}]}', "a.conflist"),
        (b'{"name": "n", "cniVersion": "one", "type": "x"}', "a.conf"),
    ],
)
def test_libcni_refuses_what_libcni_refuses(data: bytes, name: str) -> None:
    with pytest.raises(libcni.ConfigError):
        libcni.load(data, name)
