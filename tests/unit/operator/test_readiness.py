"""The CNI-readiness verdict and the taint list, and the verdict on a tmp host root
with our real plugins (the package launchers) answering STATUS."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.atomic import sha256_bytes
from cni_operator.node.binaries import VersionProber
from cni_operator.node.cnistatus import node_readiness
from cni_operator.node.manifest import ManagedNetwork, Manifest, OwnedBinary
from cni_operator.node.own_binaries import LauncherSource
from cni_operator.node.paths import HostPaths
from cni_operator.node.scan import scan_node
from cni_operator.readiness import TAINT_KEY, StatusAnswer, judge, taints_after
from cni_operator.runtime_order import rules_for

from node_plugin.ipam.store import Store


def test_judge_needs_our_config_in_use_and_every_status_ok() -> None:
    ok = judge([("containerd", True, True, "")], [StatusAnswer("cniwarden-bridge", True)])
    assert ok.ready and ok.message == "CNI ready"
    shadowed = judge([("containerd", False, True, "uses 00-other.conflist")], [])
    assert not shadowed.ready and "00-other.conflist" in shadowed.message
    broken = judge([("containerd", True, False, "MissingBinary")], [])
    assert not broken.ready and "cannot use our config" in broken.message
    down = judge(
        [("containerd", True, True, "")],
        [StatusAnswer("cniwarden-bridge", False, "code 50: server down")],
    )
    assert not down.ready and "code 50" in down.message
    no_status_verb = judge([("containerd", True, True, "")], [])  # plugins before CNI 1.1
    assert no_status_verb.ready


def node(taints: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"spec": {} if taints is None else {"taints": taints}}


def test_taints_after_keeps_every_other_taint() -> None:
    other = {"key": "example.com/x", "effect": "NoExecute", "value": "1"}
    assert taints_after(node(None), True) == [{"key": TAINT_KEY, "effect": "NoSchedule"}]
    assert taints_after(node([other]), True) == [other, {"key": TAINT_KEY, "effect": "NoSchedule"}]
    ours = {"key": TAINT_KEY, "effect": "NoSchedule"}
    assert taints_after(node([other, ours]), True) is None
    assert taints_after(node([other, ours]), False) == [other]
    assert taints_after(node([other]), False) is None
    assert taints_after(node([{"key": TAINT_KEY, "effect": "NoExecute"}]), True) == [ours]


SUBNET = "10.88.0.0/29"  # 5 allocatable addresses


@pytest.fixture
def our_node(tmp_path: Path) -> tuple[HostPaths, Manifest, Path]:
    """A tmp host root running our plugins (launchers into this package) from a
    config of ours that containerd would use."""
    paths = HostPaths(tmp_path / "host")
    paths.ensure()
    data_dir = tmp_path / "leases"
    manifest = Manifest()
    for name, data in LauncherSource().binaries().items():
        (paths.bin_dir / name).write_bytes(data)
        (paths.bin_dir / name).chmod(0o755)
        manifest.binaries[name] = OwnedBinary(sha256_bytes(data), "package-launcher")
    ipam = {"type": "cniwarden-host-local", "subnet": SUBNET, "dataDir": str(data_dir)}
    body = {
        "cniVersion": "1.1.0",
        "name": "ready",
        "plugins": [{"type": "cniwarden-bridge", "bridge": "cwready0", "ipam": ipam}],
    }
    raw = json.dumps(body).encode()
    (paths.conf_dir / "10-ready.conflist").write_bytes(raw)
    manifest.networks["ready"] = ManagedNetwork("10-ready.conflist", sha256_bytes(raw), 1, {})
    return paths, manifest, data_dir


def verdict(paths: HostPaths, manifest: Manifest, prober: VersionProber) -> Any:
    # containerd 2.x: its libcni reads a CNI 1.1.0 result (1.7's does not), and
    # STATUS needs 1.1.0.
    containerd2 = (rules_for("containerd", (2, 0)),)
    scan = scan_node(paths, manifest, prober, node_view=True, runtimes=containerd2)
    return node_readiness(paths, scan, manifest, ["containerd"], timeout=20)


def test_ready_on_our_node_and_not_ready_on_each_regression(
    our_node: tuple[HostPaths, Manifest, Path],
) -> None:
    paths, manifest, data_dir = our_node
    prober = VersionProber()
    first = verdict(paths, manifest, prober)
    assert first.ready, first.message

    # The pool full: host-local's STATUS answers 50.
    store = Store(str(data_dir), "ready")
    with store.locked():
        for i in range(2, 7):
            assert store.reserve(ipaddress.ip_address(f"10.88.0.{i}"), f"c{i}", "eth0", 0)
    full = verdict(paths, manifest, prober)
    assert not full.ready and "code 50" in full.message, full.message
    with store.locked():
        store.release(ipaddress.ip_address("10.88.0.6"))
    assert verdict(paths, manifest, prober).ready

    # A foreign file that sorts first: containerd no longer uses ours.
    shadow = paths.conf_dir / "00-foreign.conflist"
    shadow.write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "cniwarden-bridge"}]})
    )
    shadowed = verdict(paths, manifest, prober)
    assert not shadowed.ready and "does not use a cniwarden config" in shadowed.message
    shadow.unlink()
    assert verdict(paths, manifest, prober).ready

    # A binary gone.
    (paths.bin_dir / "cniwarden-bridge").unlink()
    gone = verdict(paths, manifest, prober)
    assert not gone.ready, gone.message
