"""The doctor's decision tree on a tmp host root: config drift against the node's own
history (and its restore without the API server), the kernel changed since the last
good apply, pool usage and leaked leases (with --gc), each with its fix in --json."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from cni_operator import doctor
from cni_operator.node import manifest as manifest_io
from cni_operator.node.atomic import sha256_bytes
from cni_operator.node.history import (
    HISTORY_LIMIT,
    networks_with_history,
    prune_history,
    read_history,
    record_applied,
)
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.paths import HostPaths

from node_plugin.ipam.store import Store

from .fake_cri import FakeRuntime, fake_runtime

NET = "treenet"
FILE = f"10-{NET}.conflist"


def conflist(subnet: str) -> bytes:
    ipam = {"type": "cniwarden-host-local", "subnet": subnet}
    plugin = {"type": "cniwarden-bridge", "bridge": "cwtree0", "ipam": ipam}
    return json.dumps({"cniVersion": "1.0.0", "name": NET, "plugins": [plugin]}).encode()


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    paths = HostPaths(tmp_path / "host")
    paths.ensure()
    good = conflist("10.99.0.0/29")
    (paths.conf_dir / FILE).write_bytes(good)
    manifest = Manifest(networks={NET: ManagedNetwork(FILE, sha256_bytes(good), 4, {})})
    manifest_io.save(paths, manifest)
    record_applied(paths, NET, FILE, good, 4, kernel=os.uname().release)
    return paths


def run_doctor(paths: HostPaths, **options: Any) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = doctor.main(paths.root, as_json=True, journal=False, **options)
    return code, json.loads(out.getvalue())


def codes(report: dict[str, Any]) -> set[str]:
    return {p["code"] for p in report["problems"]}


def test_history_is_bounded_and_skips_a_repeat(tmp_path: Path) -> None:
    paths = HostPaths(tmp_path)
    assert record_applied(paths, "n", "f", b"a", 1, kernel="k")
    assert not record_applied(paths, "n", "f", b"a", 1, kernel="k")
    for generation in range(2, 2 + HISTORY_LIMIT + 3):
        record_applied(paths, "n", "f", f"{generation}".encode(), generation, kernel="k")
    entries = read_history(paths, "n")
    assert len(entries) == HISTORY_LIMIT
    assert entries[-1].generation == 1 + HISTORY_LIMIT + 3
    record_applied(paths, "gone", "g", b"x", 1, kernel="k")
    prune_history(paths, {"n"})
    assert networks_with_history(paths) == ["n"]


def test_config_changed_since_last_good_then_restored_without_the_api_server(
    host: HostPaths,
) -> None:
    target = host.conf_dir / FILE
    good = target.read_bytes()
    target.write_bytes(conflist("10.99.9.0/29"))
    _, report = run_doctor(host)
    assert "ConfigChangedSinceLastGood" in codes(report)
    (item,) = report["configHistory"]["networks"]
    assert item["lastGoodGeneration"] == 4
    assert any("10.99.9.0/29" in line for line in item["diff"])
    fix = next(p["fix"] for p in report["problems"] if p["code"] == "ConfigChangedSinceLastGood")
    assert "--restore-last-good" in fix

    _, restored = run_doctor(host, restore_last_good=True)
    assert target.read_bytes() == good
    assert restored["configHistory"]["networks"][0]["restored"] is True
    assert "ConfigChangedSinceLastGood" not in codes(restored)
    assert "ManagedFileModified" not in codes(restored)


def test_kernel_changed_since_the_last_good_apply(host: HostPaths) -> None:
    record_applied(host, NET, FILE, (host.conf_dir / FILE).read_bytes(), 5, kernel="4.19.0-old")
    _, report = run_doctor(host)
    kernel = next(p for p in report["problems"] if p["code"] == "KernelChanged")
    assert "4.19.0-old" in kernel["message"] and os.uname().release in kernel["message"]


def test_pool_usage_leaked_leases_and_gc(host: HostPaths, tmp_path: Path) -> None:
    store = Store(str(host.networks_dir), NET)
    with store.locked():
        for i, owner in ((2, "live"), (3, "gone")):
            assert store.reserve(ipaddress.ip_address(f"10.99.0.{i}"), owner, "eth0", 0)
    old = time.time() - 3600
    for i in (2, 3):
        os.utime(store.dir / f"10.99.0.{i}", (old, old))
    # The doctor asks the runtime over CRI (ListPodSandbox) through its one client.
    with fake_runtime(host.root, FakeRuntime(sandboxes=["live"])):
        _, report = run_doctor(host)
        (pool,) = report["ipPools"]["pools"]
        assert (pool["used"], pool["size"], pool["leaked"]) == (2, 5, 1)
        assert "LeakedLeases" in codes(report)
        assert report["ipPools"]["runtime"] == "/run/containerd/containerd.sock"
        assert report["runtime"]["judgedBy"] == ["containerd"]

        _, after = run_doctor(host, gc=True)
        assert [r["ip"] for r in after["ipPools"]["released"]] == ["10.99.0.3"]
        assert (store.dir / "10.99.0.2").exists() and not (store.dir / "10.99.0.3").exists()

    _, unreachable = run_doctor(host)  # no CRI socket on this root: nothing is leaked
    assert unreachable["ipPools"]["pools"][0]["leakCheck"] == "RuntimeUnreachable"
    assert "RuntimeUnreachable" in codes(unreachable)
