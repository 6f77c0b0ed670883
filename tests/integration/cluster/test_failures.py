"""Bring-up failures are loud and leave nothing behind; dead sessions' clusters are reaped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.localcluster import Tier, up
from devtools.localcluster.cluster import reap_orphans
from devtools.localcluster.procs import ComponentError, processes_matching
from devtools.localcluster.toolpaths import PINNED_TOOLS, tools_bin

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts cluster processes as root")


def _ours(root: Path) -> list[int]:
    return processes_matching(lambda _pid, cmd, _cg: str(root) in cmd)


def test_a_failing_component_fails_bring_up_with_its_log_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for name in PINNED_TOOLS:
        (fake_bin / name).symlink_to(tools_bin() / name)
    (fake_bin / "kube-apiserver").unlink()
    (fake_bin / "kube-apiserver").write_text(
        "#!/bin/sh\necho 'E0101 listen tcp: bind: address already in use' >&2\nexit 1\n"
    )
    (fake_bin / "kube-apiserver").chmod(0o755)
    monkeypatch.setenv("CNIWARDEN_TOOLS_BIN", str(fake_bin))
    root = tmp_path / "clusters"

    with pytest.raises(ComponentError) as err:
        up("broken", Tier.CONTROL_PLANE, root=root)
    message = str(err.value)
    assert "kube-apiserver exited before it was ready" in message
    assert "address already in use" in message, "the error carries the component's log tail"
    assert not (root / "broken").exists()
    assert _ours(root) == [], "etcd, started before the failure, must be stopped"
    assert not [p for p in (root / ".slots").iterdir() if p.name.isdigit()]


def test_clusters_of_dead_sessions_are_reaped(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    root = tmp_path / "clusters"
    orphan = up("orphan", Tier.CONTROL_PLANE, root=root, owner_pid=dead.pid)
    assert orphan.pids()
    live = up("owned", Tier.CONTROL_PLANE, root=root, owner_pid=os.getpid())
    try:
        assert reap_orphans(root) == ["orphan"]
        assert not orphan.workdir.exists()
        assert not orphan.pids()
        assert live.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    finally:
        live.down()
    assert _ours(root) == []
