"""One agent pass against a tmp host root, with Debian's reference plugins
declared as binaries (verified by sha256): writes, the gate, quarantine,
invalid specs, deletion and restart convergence. The API side is tested in
tests/integration/operator against the real API server."""

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cni_operator.api import BinarySourcePolicy
from cni_operator.node.atomic import sha256_file
from cni_operator.node.fetch import FetchLimits
from cni_operator.node.own_binaries import DirectorySource
from cni_operator.node.paths import HostPaths
from cni_operator.node.watcher import IN_MOVED_TO, DirectoryWatcher, DirEvent
from cni_operator.reconcile import Reconciler

from .loopback_http import LoopbackServer, respond, serving

REFERENCE = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    not (REFERENCE / "bridge").exists(),
    reason="containernetworking-plugins not installed (make debs)",
)
NODE = {
    "metadata": {"name": "n1", "labels": {"pool": "a"}},
    "spec": {"podCIDRs": ["10.244.1.0/24"]},
}


def declared(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "sha256": sha256_file(REFERENCE / n), "source": {"file": str(REFERENCE / n)}}
        for n in names
    ]


def network(
    name: str = "podnet", generation: int = 1, priority: int = 10, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "priority": priority,
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cw0",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
        "binaries": declared("bridge", "host-local"),
    }
    body.update(spec)
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINetwork",
        "metadata": {"name": name, "generation": generation, "uid": "u-" + name},
        "spec": body,
    }


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    return HostPaths(tmp_path / "root")


@pytest.fixture
def reconciler(host: HostPaths, tmp_path: Path) -> Reconciler:
    own = tmp_path / "own"
    own.mkdir()
    return Reconciler(host, "n1", DirectorySource(own))


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in status["networks"] if e["name"] == name)


def attach(host: HostPaths, net: str, container: str, ip: str = "10.244.1.5") -> None:
    store = host.networks_dir / net
    store.mkdir(parents=True, exist_ok=True)
    (store / ip).write_text(f"{container}\r\neth0")


def test_apply_writes_binaries_then_config(host: HostPaths, reconciler: Reconciler) -> None:
    result = reconciler.reconcile({"podnet": network()}, NODE)
    conf = host.conf_dir / "10-podnet.conflist"
    written = json.loads(conf.read_bytes())
    assert written["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert sha256_file(host.bin_dir / "bridge") == sha256_file(REFERENCE / "bridge")
    assert entry(result.status, "podnet")["state"] == "Applied"
    assert result.status["runtimes"]["containerd"]["file"] == "10-podnet.conflist"
    assert result.status["healthy"] is True
    assert [e.reason for e in result.events] == ["Applied"]
    # Idempotent: nothing changes, no duplicate file, no second event.
    again = reconciler.reconcile({"podnet": network()}, NODE)
    assert again.events == []
    assert sorted(os.listdir(host.conf_dir)) == ["10-podnet.conflist"]


def test_missing_binary_keeps_last_good_config(host: HostPaths, reconciler: Reconciler) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    good = (host.conf_dir / "10-podnet.conflist").read_bytes()
    broken = network(generation=2)
    broken["spec"]["plugins"].append({"type": "no-such-plugin"})
    result = reconciler.reconcile({"podnet": broken}, NODE)
    state = entry(result.status, "podnet")
    assert state["state"] == "Invalid" and state["appliedGeneration"] == 1
    assert "'no-such-plugin' is not installed" in state["message"]
    assert (host.conf_dir / "10-podnet.conflist").read_bytes() == good
    assert any(e.reason == "InvalidConfig" for e in result.events)


def test_incompatible_version_is_refused(host: HostPaths, reconciler: Reconciler) -> None:
    result = reconciler.reconcile({"podnet": network(cniVersion="1.1.0")}, NODE)
    assert entry(result.status, "podnet")["state"] == "Invalid"
    assert "config asks for 1.1.0" in entry(result.status, "podnet")["message"]
    assert not (host.conf_dir / "10-podnet.conflist").exists()


def test_subnet_change_with_attachment_is_held_until_acknowledged(
    host: HostPaths, reconciler: Reconciler
) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    before = (host.conf_dir / "10-podnet.conflist").read_bytes()
    attach(host, "podnet", "sandbox1")
    changed = network(generation=2)
    changed["spec"]["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.9.0.0/24"}]]
    held = reconciler.reconcile({"podnet": changed}, NODE)
    state = entry(held.status, "podnet")
    assert state["state"] == "Blocked"
    assert state["blockedFields"] == ["plugins[0].ipam.ranges"]
    assert state["attachments"] == 1 and state["appliedGeneration"] == 1
    assert (host.conf_dir / "10-podnet.conflist").read_bytes() == before

    # An acknowledgement for another node or generation does not count.
    changed["metadata"]["annotations"] = {
        "cniwarden.io/proceed-generation": "1",
        "cniwarden.io/proceed-nodes": "n1",
    }
    assert (
        entry(reconciler.reconcile({"podnet": changed}, NODE).status, "podnet")["state"]
        == "Blocked"
    )
    changed["metadata"]["annotations"]["cniwarden.io/proceed-generation"] = "2"
    done = reconciler.reconcile({"podnet": changed}, NODE)
    assert entry(done.status, "podnet")["state"] == "Applied"
    assert b"10.9.0.0/24" in (host.conf_dir / "10-podnet.conflist").read_bytes()


def test_safe_change_rolls_out_despite_attachments(host: HostPaths, reconciler: Reconciler) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    attach(host, "podnet", "sandbox1")
    changed = network(generation=2)
    changed["spec"]["plugins"][0]["mtu"] = 1400
    result = reconciler.reconcile({"podnet": changed}, NODE)
    assert entry(result.status, "podnet")["state"] == "Applied"
    assert (
        json.loads((host.conf_dir / "10-podnet.conflist").read_bytes())["plugins"][0]["mtu"] == 1400
    )


def test_new_network_taking_over_attached_one_is_held(
    host: HostPaths, reconciler: Reconciler
) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    attach(host, "podnet", "sandbox1")
    other = network("fastnet", priority=5)
    other["spec"]["plugins"][0]["bridge"] = "cw9"
    result = reconciler.reconcile({"podnet": network(), "fastnet": other}, NODE)
    state = entry(result.status, "fastnet")
    assert state["state"] == "Blocked"
    assert "new pods would move from network podnet to fastnet" in state["blockedFields"][0]
    assert not (host.conf_dir / "05-fastnet.conflist").exists()


def test_quarantine_moves_winner_aside_and_restores_exactly(
    host: HostPaths, reconciler: Reconciler
) -> None:
    host.conf_dir.mkdir(parents=True)
    planted = host.conf_dir / "00-podman.conflist"
    payload = b'{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge"}]}\n'
    planted.write_bytes(payload)
    report = reconciler.reconcile({"podnet": network()}, NODE)
    fresh = reconciler.reconcile({"podnet": network(generation=2, shadowPolicy="Quarantine")}, NODE)
    assert planted.exists(), "a file that may still be being written is not moved yet"
    assert fresh.recheck_in is not None and 0 < fresh.recheck_in <= 0.5
    old = planted.stat().st_mtime - 5
    os.utime(planted, (old, old))
    assert report.status["shadowingFiles"] == ["/etc/cni/net.d/00-podman.conflist"]
    assert planted.exists()

    quarantined = reconciler.reconcile(
        {"podnet": network(generation=2, shadowPolicy="Quarantine")}, NODE
    )
    assert not planted.exists()
    assert quarantined.status["shadowingFiles"] == []
    (moved,) = quarantined.status["quarantined"]
    assert moved["original"] == "/etc/cni/net.d/00-podman.conflist"
    assert any(e.reason == "Quarantined" for e in quarantined.events)

    deleting = network(generation=2, shadowPolicy="Quarantine")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    gone = reconciler.reconcile({"podnet": deleting}, NODE)
    assert planted.read_bytes() == payload
    assert not (host.conf_dir / "10-podnet.conflist").exists()
    assert not (host.bin_dir / "bridge").exists()
    assert gone.status["managedFiles"] == [] and gone.status["quarantined"] == []
    assert entry(gone.status, "podnet")["state"] == "Removed"


def test_unselected_node_removes_and_foreign_binaries_stay(
    host: HostPaths, reconciler: Reconciler
) -> None:
    host.bin_dir.mkdir(parents=True)
    (host.bin_dir / "loopback").write_bytes(b"not ours")
    reconciler.reconcile({"podnet": network()}, NODE)
    elsewhere = network(generation=2, nodeSelector={"pool": "b"})
    reconciler.reconcile({"podnet": elsewhere}, NODE)
    assert sorted(os.listdir(host.conf_dir)) == []
    assert os.listdir(host.bin_dir) == ["loopback"]


def test_invalid_spec_keeps_last_good_file(host: HostPaths, reconciler: Reconciler) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    bad = network(generation=2)
    bad["spec"]["priority"] = 500
    result = reconciler.reconcile({"podnet": bad}, NODE)
    assert entry(result.status, "podnet")["state"] == "Invalid"
    assert (host.conf_dir / "10-podnet.conflist").exists()


def test_restart_converges_without_duplicates(host: HostPaths, tmp_path: Path) -> None:
    own = tmp_path / "own2"
    own.mkdir()
    first = Reconciler(host, "n1", DirectorySource(own))
    first.reconcile({"podnet": network()}, NODE)
    moved = network(generation=2, priority=20)
    second = Reconciler(host, "n1", DirectorySource(own))
    result = second.reconcile({"podnet": moved}, NODE)
    assert sorted(os.listdir(host.conf_dir)) == ["20-podnet.conflist"]
    assert entry(result.status, "podnet")["appliedGeneration"] == 2
    third = Reconciler(host, "n1", DirectorySource(own))
    third.reconcile({"podnet": moved}, NODE)
    assert sorted(os.listdir(host.conf_dir)) == ["20-podnet.conflist"]


def test_own_binaries_come_from_the_source(host: HostPaths, tmp_path: Path) -> None:
    own = tmp_path / "own3"
    own.mkdir()
    shim = own / "cniwarden-bridge"
    shim.write_text(
        '#!/bin/sh\necho \'{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}\'\n'
    )
    shim.chmod(0o755)
    spec = network(cniVersion="1.1.0")
    spec["spec"]["plugins"] = [{"type": "cniwarden-bridge", "bridge": "cw0"}]
    spec["spec"]["binaries"] = []
    result = Reconciler(host, "n1", DirectorySource(own)).reconcile({"podnet": spec}, NODE)
    assert entry(result.status, "podnet")["state"] == "Applied"
    binary = next(b for b in result.status["binaries"] if b["name"] == "cniwarden-bridge")
    assert binary["owned"] and binary["versions"] == ["1.0.0", "1.1.0"]


def test_unknown_node_or_unlisted_networks_change_nothing(
    host: HostPaths, reconciler: Reconciler
) -> None:
    reconciler.reconcile({"podnet": network()}, NODE)
    before = sorted(os.listdir(host.conf_dir)), sorted(os.listdir(host.bin_dir))
    # A restarted agent before its first list, or before it has seen its Node.
    for networks, node in ((None, NODE), ({}, None), ({"podnet": network()}, None)):
        result = reconciler.reconcile(networks, node)
        assert (sorted(os.listdir(host.conf_dir)), sorted(os.listdir(host.bin_dir))) == before
        assert result.status["managedFiles"]


def test_custom_data_dir_counts_as_a_lease_store(host: HostPaths, reconciler: Reconciler) -> None:
    custom = network()
    custom["spec"]["plugins"][0]["ipam"]["dataDir"] = "/run/cni-leases"
    reconciler.reconcile({"podnet": custom}, NODE)
    store = host.root / "run/cni-leases/podnet"
    store.mkdir(parents=True)
    (store / "10.244.1.9").write_text("c9\r\neth0")
    changed = network(generation=2)
    changed["spec"]["plugins"][0]["ipam"]["dataDir"] = "/run/cni-leases"
    changed["spec"]["plugins"][0]["bridge"] = "cw7"
    held = reconciler.reconcile({"podnet": changed}, NODE)
    assert entry(held.status, "podnet")["state"] == "Blocked"
    assert entry(held.status, "podnet")["attachments"] == 1


def test_policy_back_to_report_restores(host: HostPaths, reconciler: Reconciler) -> None:
    host.conf_dir.mkdir(parents=True)
    planted = host.conf_dir / "00-podman.conflist"
    payload = b'{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge"}]}'
    planted.write_bytes(payload)
    old = planted.stat().st_mtime - 5
    os.utime(planted, (old, old))
    reconciler.reconcile({"podnet": network(shadowPolicy="Quarantine")}, NODE)
    assert not planted.exists()
    back = reconciler.reconcile({"podnet": network(generation=2, shadowPolicy="Report")}, NODE)
    assert planted.read_bytes() == payload
    assert back.status["quarantined"] == []
    assert back.status["shadowingFiles"] == ["/etc/cni/net.d/00-podman.conflist"]
    assert any(e.reason == "Restored" for e in back.events)


def test_other_spellings_never_bypass_the_gate(host: HostPaths, reconciler: Reconciler) -> None:
    """Issue 11 item 6: with a live lease, a change of `Bridge` is held like one of
    `bridge`, and an `IPAM` beside `ipam` (read by the plugins, unseen by every
    check) is refused."""
    spelled = network()
    plugin = spelled["spec"]["plugins"][0]
    plugin["Bridge"] = plugin.pop("bridge")
    reconciler.reconcile({"podnet": spelled}, NODE)
    before = (host.conf_dir / "10-podnet.conflist").read_bytes()
    attach(host, "podnet", "sandbox1")
    moved = network(generation=2)
    moved["spec"]["plugins"][0].pop("bridge")
    moved["spec"]["plugins"][0]["Bridge"] = "cw1"
    held = entry(reconciler.reconcile({"podnet": moved}, NODE).status, "podnet")
    assert held["state"] == "Blocked" and held["blockedFields"] == ["plugins[0].bridge"]
    assert (host.conf_dir / "10-podnet.conflist").read_bytes() == before

    shadowed = network(generation=3)
    shadowed["spec"]["plugins"][0]["IPAM"] = {
        "type": "host-local",
        "ranges": [[{"subnet": "10.9.0.0/24"}]],
    }
    refused = entry(reconciler.reconcile({"podnet": shadowed}, NODE).status, "podnet")
    assert refused["state"] == "Invalid"
    assert "plugins[0].IPAM: write 'ipam'" in refused["message"]
    assert (host.conf_dir / "10-podnet.conflist").read_bytes() == before


def served(server: LoopbackServer, *names: str) -> list[dict[str, Any]]:
    return [
        {"name": n, "sha256": sha256_file(REFERENCE / n), "source": {"url": server.url("/" + n)}}
        for n in names
    ]


def test_url_binaries_are_fetched_only_when_the_node_lacks_them(
    host: HostPaths, reconciler: Reconciler
) -> None:
    """Issue 11 item 3: a second pass (every lease write wakes one) downloads
    nothing; a source that is down never invalidates a network whose verified
    binaries are in place, and a safe MTU change still rolls out."""
    routes = {f"/{n}": respond((REFERENCE / n).read_bytes()) for n in ("bridge", "host-local")}
    with serving(routes) as server:
        spec = network(binaries=served(server, "bridge", "host-local"))
        first = reconciler.reconcile({"podnet": spec}, NODE)
        assert entry(first.status, "podnet")["state"] == "Applied"
        assert sorted(server.requests) == ["/bridge", "/host-local"]
        reconciler.reconcile({"podnet": spec}, NODE)
        attach(host, "podnet", "sandbox1")
        reconciler.reconcile({"podnet": spec}, NODE)
        assert sorted(server.requests) == ["/bridge", "/host-local"], "fetched again"
        binaries = served(server, "bridge", "host-local")
    # The source is gone now (connection refused).
    changed = network(generation=2, binaries=binaries)
    changed["spec"]["plugins"][0]["mtu"] = 1400
    result = reconciler.reconcile({"podnet": changed}, NODE)
    assert entry(result.status, "podnet")["state"] == "Applied", entry(result.status, "podnet")
    conf = json.loads((host.conf_dir / "10-podnet.conflist").read_bytes())
    assert conf["plugins"][0]["mtu"] == 1400

    # A binary the node does not have yet still needs its source, and says so.
    (host.bin_dir / "host-local").unlink()
    broken = reconciler.reconcile({"podnet": changed}, NODE)
    state = entry(broken.status, "podnet")
    assert state["state"] == "Invalid" and "host-local: http://127.0.0.1:" in state["message"]
    assert (host.conf_dir / "10-podnet.conflist").exists(), "the last good file stays"


def test_download_limits_and_allowed_sources_apply(host: HostPaths, tmp_path: Path) -> None:
    own = tmp_path / "own-limits"
    own.mkdir()
    strict = Reconciler(
        host,
        "n1",
        DirectorySource(own),
        sources=BinarySourcePolicy(("https://plugins.example/releases/",)),
        fetch_limits=FetchLimits(deadline_seconds=1.0, max_bytes=1024),
    )
    with serving({"/bridge": respond((REFERENCE / "bridge").read_bytes())}) as server:
        spec = network(binaries=served(server, "bridge"))
        refused = entry(strict.reconcile({"podnet": spec}, NODE).status, "podnet")
        assert refused["state"] == "Invalid"
        assert "is not under an allowed prefix" in refused["message"]
        assert server.requests == []
        capped = Reconciler(
            host, "n1", DirectorySource(own), fetch_limits=FetchLimits(5.0, max_bytes=1024)
        )
        too_big = entry(capped.reconcile({"podnet": spec}, NODE).status, "podnet")
        assert too_big["state"] == "Invalid"
        assert "more than the 1024 allowed" in too_big["message"]
    assert not (host.conf_dir / "10-podnet.conflist").exists()


def test_binaries_land_before_the_config_that_names_them(
    host: HostPaths, reconciler: Reconciler
) -> None:
    """The order as the kernel saw it: one inotify queue over both directories
    records each rename into place, so the trace shows which landed first."""
    host.ensure()
    watcher = DirectoryWatcher([host.conf_dir, host.bin_dir])
    try:
        reconciler.reconcile({"podnet": network()}, NODE)
        events: list[DirEvent] = []
        while batch := watcher.read_events():
            events += batch
    finally:
        watcher.close()
    landed = [(e.directory, e.name) for e in events if e.mask & IN_MOVED_TO]
    config = landed.index((host.conf_dir, "10-podnet.conflist"))
    for binary in ("bridge", "host-local"):
        assert landed.index((host.bin_dir, binary)) < config, landed
    assert landed[-1] == (host.conf_dir, "10-podnet.conflist"), landed
