"""`cniwarden doctor` as a person runs it: the real CLI on a host root that an
agent pass prepared, with each problem seeded in turn. No API server needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.atomic import sha256_file
from cni_operator.node.own_binaries import DirectorySource
from cni_operator.node.paths import HostPaths
from cni_operator.reconcile import Reconciler

REFERENCE = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    not (REFERENCE / "bridge").exists(), reason="containernetworking-plugins missing"
)
NODE = {"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.3.0/24"]}}


def doctor(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cni_operator.cli", "doctor", "--host-root", str(root), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def node(tmp_path: Path) -> HostPaths:
    paths = HostPaths(tmp_path / "root")
    own = tmp_path / "own"
    own.mkdir()
    spec: dict[str, Any] = {
        "priority": 10,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cw0",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
        "binaries": [
            {
                "name": n,
                "sha256": sha256_file(REFERENCE / n),
                "source": {"file": str(REFERENCE / n)},
            }
            for n in ("bridge", "host-local")
        ],
    }
    body = {"metadata": {"name": "podnet", "generation": 1}, "spec": spec}
    Reconciler(paths, "n1", DirectorySource(own)).reconcile({"podnet": body}, NODE)
    return paths


def problems(root: Path) -> dict[str, dict[str, Any]]:
    out = doctor(root, "--json")
    report = json.loads(out.stdout)
    return {p["code"] + ":" + Path(p.get("path", "")).name: p for p in report["problems"]}


def test_clean_node(node: HostPaths) -> None:
    out = doctor(node.root)
    assert out.returncode == 0, out.stdout
    assert "10-podnet.conflist (network podnet): ok" in out.stdout
    assert "Verdict: OK" in out.stdout


def test_each_seeded_problem_is_found_with_its_fix(node: HostPaths) -> None:
    conf = node.conf_dir
    (conf / "00-podman.conflist").write_text(
        '{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge"}]}'
    )
    out = doctor(node.root)
    assert out.returncode == 1, out.stdout
    assert "ForeignConfigWins" in out.stdout and "shadowPolicy: Quarantine" in out.stdout
    assert f"mv {conf / '00-podman.conflist'} /root/" in out.stdout

    (conf / "50-calico.conflist").write_text(
        '{"cniVersion":"1.0.0","name":"calico","plugins":[{"type":"calico"}]}'
    )
    (conf / "60-new.conflist").write_text(
        '{"cniVersion":"1.1.0","name":"new","plugins":[{"type":"bridge"}]}'
    )
    node.results_dir.mkdir(parents=True, exist_ok=True)
    (node.results_dir / "podnet-abc-eth0").write_text("")
    ours = conf / "10-podnet.conflist"
    ours.write_text(ours.read_text().replace("cw0", "cw9"))
    (node.bin_dir / "host-local").write_bytes((REFERENCE / "loopback").read_bytes())
    found = problems(node.root)
    expected = {
        "ForeignConfigWins:00-podman.conflist": "error",
        "MissingBinary:50-calico.conflist": "warning",
        "IncompatibleVersion:60-new.conflist": "warning",
        "EmptyResultCache:podnet-abc-eth0": "warning",
        "ManagedFileModified:10-podnet.conflist": "warning",
        "OwnedBinaryModified:host-local": "warning",
    }
    for key, severity in expected.items():
        assert key in found, f"{key} not in {sorted(found)}"
        assert found[key]["severity"] == severity
        assert found[key]["fix"]
    assert "Install the plugin binary" in found["MissingBinary:50-calico.conflist"]["fix"]
    assert "rm " in found["EmptyResultCache:podnet-abc-eth0"]["fix"]

    # A truncated file read before any valid one: containerd cannot start pods.
    (conf / "00-aaa.conflist").write_text('{"cniVersion":"1.0.0","name":"a","plugins":[{"ty')
    out = doctor(node.root)
    assert out.returncode == 2, out.stdout
    assert "node-killer for containerd" in out.stdout
    assert "json.tool" in out.stdout
    assert "Verdict: BROKEN" in out.stdout
    # Judged by CRI-O only, the node still works (it skips the bad file).
    crio = doctor(node.root, "--runtime", "crio")
    assert crio.returncode == 1, crio.stdout

    ours.unlink()
    assert "ManagedFileMissing:10-podnet.conflist" in problems(node.root)


def test_empty_node_is_broken(tmp_path: Path) -> None:
    out = doctor(tmp_path)
    assert out.returncode == 2
    assert "NoUsableConfig" in out.stdout


def test_a_corrupt_journal_or_manifest_is_a_problem_never_a_crash(node: HostPaths) -> None:
    """Issue 11 item 4: one corrupt journal line that is not the last made the
    doctor crash with a traceback; so did an unreadable manifest."""
    node.journal.parent.mkdir(parents=True, exist_ok=True)
    good = (
        '{"op": "quarantine", "original": "/etc/cni/net.d/00-x.conflist", "stored": '
        '"/etc/cni/net.d/.cniwarden-quarantine/a.quarantined", "sha256": "' + "ab" * 32 + '", '
        '"time": "2026-01-01T00:00:00Z", "network": "podnet"}\n'
    )
    node.journal.write_text(good + "{broken\n" + good)
    out = doctor(node.root)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1, out.stdout
    assert "QuarantineJournalCorrupt" in out.stdout and "line 2" in out.stdout
    assert "00-x.conflist" in out.stdout  # the readable entry is still listed

    node.manifest.write_text('{"networks": {"podnet": ')
    out = doctor(node.root, "--json")
    assert "Traceback" not in out.stderr, out.stderr
    codes = [p["code"] for p in json.loads(out.stdout)["problems"]]
    assert codes[0] == "ManifestUnreadable" and "QuarantineJournalCorrupt" in codes
