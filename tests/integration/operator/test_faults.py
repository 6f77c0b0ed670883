"""kill -9 at every observable point of the agent's write paths, and a full state
directory (issue 11, fault injection).

Each write path (a first apply: binaries then config; an update that renames the
file; a quarantine; a restore) runs as a real agent pass in a child process that
SIGKILLs itself at the k-th file-system call it makes (tests/faults.py: Python's
audit hook numbers them; k = 1 .. all of them). After each kill the node is
checked as a runtime would see it at that instant (no partial config or binary;
the foreign file's bytes at its path or in the quarantine store), then a
restarted agent's pass must converge with nothing lost and no temp file left.

The full disk is a real tmpfs of 64 KiB mounted on the agent's state directory
(unmounted in every case): passes report a clear NodeWriteFailed /
QuarantineFailed problem instead of raising, change nothing half-way, and
converge once space is back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node import manifest as manifest_io
from cni_operator.node.atomic import sha256_bytes, sha256_file
from cni_operator.node.own_binaries import DirectorySource
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import STORE_NAME, Quarantine
from cni_operator.reconcile import PassResult, Reconciler
from cni_operator.runtime_order import CONFIG_SUFFIXES

from tests.faults import run_child

REFERENCE = Path("/usr/lib/cni")
pytestmark = [
    pytest.mark.skipif(
        not (REFERENCE / "bridge").exists(), reason="containernetworking-plugins missing"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]
NODE = {"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.7.0/24"]}}
FOREIGN = b'{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge","bridge":"p0"}]}\n'
KILL_POINTS: dict[str, int] = {}  # scenario -> kill points tried (printed at the end)


def network(generation: int = 1, deleting: bool = False, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "priority": 10,
        "cniVersion": "1.0.0",
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
    body.update(spec)
    meta: dict[str, Any] = {"name": "podnet", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": body}


def agent_pass(host: HostPaths, own: Path, body: dict[str, Any]) -> PassResult:
    """One pass of a freshly started agent."""
    return Reconciler(host, "n1", DirectorySource(own)).reconcile({"podnet": body}, NODE)


def temp_files(host: HostPaths) -> list[str]:
    found = []
    for directory in (host.conf_dir, host.bin_dir, host.state_dir, host.conf_dir / STORE_NAME):
        if directory.is_dir():
            found += [str(directory / n) for n in os.listdir(directory) if n.endswith(".tmp")]
    return found


def rendered(body: dict[str, Any], tmp: Path) -> dict[str, bytes]:
    """The config files a finished pass leaves for `body` (rendered on a scratch root)."""
    scratch = HostPaths(tmp / "scratch")
    shutil.rmtree(scratch.root, ignore_errors=True)
    own = tmp / "scratch-own"
    own.mkdir(exist_ok=True)
    agent_pass(scratch, own, body)
    return {
        n: (scratch.conf_dir / n).read_bytes()
        for n in os.listdir(scratch.conf_dir)
        if n.endswith(CONFIG_SUFFIXES)
    }


def configs(host: HostPaths) -> dict[str, bytes]:
    if not host.conf_dir.is_dir():
        return {}
    return {
        n: (host.conf_dir / n).read_bytes()
        for n in sorted(os.listdir(host.conf_dir))
        if n.endswith(CONFIG_SUFFIXES) and not n.startswith(".")
    }


def foreign_survives(host: HostPaths) -> bool:
    """The foreign file's bytes are at its path or in the quarantine store."""
    path = host.conf_dir / "00-podman.conflist"
    if path.is_file() and path.read_bytes() == FOREIGN:
        return True
    store = host.conf_dir / STORE_NAME
    return store.is_dir() and any(p.read_bytes() == FOREIGN for p in store.iterdir())


def age(path: Path) -> None:
    """Old enough to be moved (a file younger than 0.5 s may still be being written)."""
    old = path.lstat().st_mtime - 60
    os.utime(path, (old, old))


def kill_everywhere(
    name: str,
    tmp: Path,
    prepare: Callable[[HostPaths, Path], None],
    body: dict[str, Any],
    at_kill: Callable[[HostPaths], None],
    after: Callable[[HostPaths, Path], None],
) -> int:
    """For every file-system call of `body`'s pass on a node `prepare`d afresh:
    kill -9 there, check `at_kill`, restart the agent, check `after`."""
    host, own = HostPaths(tmp / name), tmp / f"{name}-own"
    own.mkdir(parents=True)

    def fresh() -> None:
        shutil.rmtree(host.root, ignore_errors=True)
        prepare(host, own)

    def one_pass() -> None:
        agent_pass(host, own, body)

    fresh()
    probe = run_child(one_pass)
    assert probe.error is None, probe.error
    for point in range(1, probe.count + 1):
        fresh()
        run = run_child(one_pass, kill_at=point)
        where = f"{name}: killed at call {point}/{probe.count} ({probe.events[point - 1]})"
        assert run.killed, where
        try:
            at_kill(host)
            agent_pass(host, own, body)
            assert temp_files(host) == [], "temp files left"
            after(host, own)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from None
    KILL_POINTS[name] = probe.count
    return probe.count


def test_kill_9_during_a_first_apply(tmp_path: Path) -> None:
    body = network()
    expected = rendered(body, tmp_path)

    def at_kill(host: HostPaths) -> None:
        for name, data in configs(host).items():
            assert expected.get(name) == data, f"partial or unexpected config {name}"
        for binary in ("bridge", "host-local"):
            path = host.bin_dir / binary
            if path.exists():
                assert sha256_file(path) == sha256_file(REFERENCE / binary), f"partial {binary}"
        manifest_io.load(host)  # whole or absent, never torn

    def after(host: HostPaths, _: Path) -> None:
        assert configs(host) == expected
        manifest = manifest_io.load(host)
        assert set(manifest.binaries) == {"bridge", "host-local"}
        assert manifest.networks["podnet"].file == "10-podnet.conflist"

    points = kill_everywhere("apply", tmp_path, lambda h, o: None, body, at_kill, after)
    assert points >= 20


def test_kill_9_during_an_update_that_renames_the_file(tmp_path: Path) -> None:
    old_body, new_body = network(), network(generation=2, priority=20)
    old, new = rendered(old_body, tmp_path), rendered(new_body, tmp_path)

    def prepare(host: HostPaths, own: Path) -> None:
        agent_pass(host, own, old_body)

    def at_kill(host: HostPaths) -> None:
        present = configs(host)
        assert present, "the runtime had no config at all"
        for name, data in present.items():
            assert {**old, **new}.get(name) == data, f"partial or unexpected config {name}"

    def after(host: HostPaths, _: Path) -> None:
        assert configs(host) == new

    kill_everywhere("update", tmp_path, prepare, new_body, at_kill, after)


def test_kill_9_during_a_quarantine_and_during_its_restore(tmp_path: Path) -> None:
    policy = network(shadowPolicy="Quarantine")

    def plant(host: HostPaths) -> Path:
        path = host.conf_dir / "00-podman.conflist"
        path.write_bytes(FOREIGN)
        os.chmod(path, 0o640)
        age(path)
        return path

    def prepare_quarantine(host: HostPaths, own: Path) -> None:
        agent_pass(host, own, network())
        plant(host)

    def at_kill(host: HostPaths) -> None:
        assert foreign_survives(host), "the foreign file is lost"

    def quarantined(host: HostPaths, own: Path) -> None:
        (entry,) = Quarantine(host).entries()
        assert not (host.conf_dir / "00-podman.conflist").exists()
        assert (host.root / entry.stored.lstrip("/")).read_bytes() == FOREIGN
        assert entry.sha256 == sha256_bytes(FOREIGN)
        assert [p.name for p in (host.conf_dir / STORE_NAME).iterdir()] == [Path(entry.stored).name]

    kill_everywhere("quarantine", tmp_path / "q", prepare_quarantine, policy, at_kill, quarantined)

    def prepare_restore(host: HostPaths, own: Path) -> None:
        agent_pass(host, own, network())
        plant(host)
        agent_pass(host, own, policy)
        assert len(Quarantine(host).entries()) == 1

    def restored(host: HostPaths, own: Path) -> None:
        path = host.conf_dir / "00-podman.conflist"
        assert path.read_bytes() == FOREIGN
        assert stat.S_IMODE(path.lstat().st_mode) == 0o640
        assert Quarantine(host).entries() == []
        assert not (host.conf_dir / STORE_NAME).exists(), "no trace left in net.d"
        assert not (host.conf_dir / "10-podnet.conflist").exists()

    deleting = network(deleting=True, shadowPolicy="Quarantine")
    kill_everywhere("restore", tmp_path / "r", prepare_restore, deleting, at_kill, restored)
    print("kill points tried:", json.dumps(KILL_POINTS))


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str = "64k") -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)], check=True
    )
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem is full; the filler file is returned for removal."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def entry(result: PassResult, name: str = "podnet") -> dict[str, Any]:
    return next(e for e in result.status["networks"] if e["name"] == name)


def codes(result: PassResult) -> dict[str, str]:
    return {p["code"]: p["message"] for p in result.status["problems"]}


def test_a_full_state_directory_is_a_clear_problem_and_loses_nothing(tmp_path: Path) -> None:
    host, own = HostPaths(tmp_path / "root"), tmp_path / "own"
    own.mkdir()
    with small_tmpfs(host.state_dir):
        filler = fill(host.state_dir)
        # A first apply: the manifest (intent) cannot be written, so nothing is.
        first = agent_pass(host, own, network())
        assert entry(first)["state"] == "Invalid"
        assert f"No space left on device: '{host.manifest}'" in entry(first)["message"]
        assert configs(host) == {} and not (host.bin_dir / "bridge").exists()
        filler.unlink()
        applied = agent_pass(host, own, network())
        assert entry(applied)["state"] == "Applied", entry(applied)
        good = configs(host)

        # A quarantine with a full disk: the journal cannot take the intent, so the
        # file stays where it is, and the problem says why.
        foreign = host.conf_dir / "00-podman.conflist"
        foreign.write_bytes(FOREIGN)
        age(foreign)
        filler = fill(host.state_dir)
        held = agent_pass(host, own, network(generation=2, shadowPolicy="Quarantine"))
        problems = codes(held)
        assert "QuarantineFailed" in problems, problems
        assert "No space left on device" in problems["QuarantineFailed"]
        assert "nothing was moved or lost" in problems["QuarantineFailed"]
        assert foreign.read_bytes() == FOREIGN and configs(host)["10-podnet.conflist"]
        assert Quarantine(host).read().corrupt == []
        filler.unlink()
        moved = agent_pass(host, own, network(generation=2, shadowPolicy="Quarantine"))
        assert not foreign.exists() and len(Quarantine(host).entries()) == 1, codes(moved)

        # A deletion with a full disk: the file goes back; what cannot be recorded
        # yet is recorded once there is room, and the next pass finishes the rest.
        filler = fill(host.state_dir)
        gone = agent_pass(
            host, own, network(generation=2, deleting=True, shadowPolicy="Quarantine")
        )
        assert foreign.read_bytes() == FOREIGN
        assert entry(gone)["message"] == "removed from this node; restored " + (
            "/etc/cni/net.d/00-podman.conflist"
        )
        manifest_path = str(host.manifest)
        assert codes(gone)["NodeWriteFailed"].startswith(
            f"no space left on the filesystem of {manifest_path}; the last good files stay"
        )
        filler.unlink()
        done = agent_pass(
            host, own, network(generation=2, deleting=True, shadowPolicy="Quarantine")
        )
        assert configs(host) == {"00-podman.conflist": FOREIGN}, codes(done)
        assert Quarantine(host).entries() == [] and manifest_io.load(host).networks == {}
        assert good  # the applied config existed throughout the outage
    assert not os.path.ismount(host.state_dir)
