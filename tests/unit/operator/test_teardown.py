"""What an exiting agent may remove: only its own state, and only when it holds nothing."""

from __future__ import annotations

from pathlib import Path

from cni_operator.node import manifest as manifest_io
from cni_operator.node.manifest import ManagedNetwork, Manifest, OwnedBinary
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine
from cni_operator.teardown import tidy_node


def idle_node(root: Path) -> HostPaths:
    paths = HostPaths(root)
    paths.ensure()
    manifest_io.save(paths, Manifest())
    return paths


def test_an_empty_state_dir_is_removed_and_nothing_else(tmp_path: Path) -> None:
    paths = idle_node(tmp_path)
    (paths.conf_dir / "10-other.conflist").write_text("{}")
    (paths.bin_dir / "bridge").write_text("binary")
    removed, message = tidy_node(tmp_path)
    assert removed and "removed the empty agent state /var/lib/cni/cniwarden" in message
    assert not paths.state_dir.exists()
    assert (paths.conf_dir / "10-other.conflist").exists() and (paths.bin_dir / "bridge").exists()
    assert tidy_node(tmp_path) == (False, "/var/lib/cni/cniwarden does not exist")


def test_state_that_manages_something_stays(tmp_path: Path) -> None:
    paths = idle_node(tmp_path)
    manifest_io.save(
        paths, Manifest(networks={"pods": ManagedNetwork("10-pods.conflist", "0" * 64, 1, {})})
    )
    removed, message = tidy_node(tmp_path)
    assert not removed and "1 network(s)" in message and paths.manifest.exists()
    manifest_io.save(paths, Manifest(binaries={"cniwarden-bridge": OwnedBinary("0" * 64, "x")}))
    assert tidy_node(tmp_path)[0] is False


def test_quarantined_files_and_unknown_files_keep_the_state(tmp_path: Path) -> None:
    paths = idle_node(tmp_path)
    foreign = paths.conf_dir / "00-foreign.conflist"
    foreign.write_text('{"name": "x"}')
    Quarantine(paths).quarantine(foreign, "pods")
    removed, message = tidy_node(tmp_path)
    assert not removed and "quarantined files wait there" in message
    Quarantine(paths).restore("pods")
    (paths.state_dir / "notes.txt").write_text("someone's")
    removed, message = tidy_node(tmp_path)
    assert not removed and "notes.txt" in message
    (paths.state_dir / "notes.txt").unlink()
    assert tidy_node(tmp_path)[0] is True
