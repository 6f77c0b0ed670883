"""Node-side I/O against tmp host roots: atomic writes, binary installs with
VERSION probes (Debian's reference plugins and a tiny test plugin), quarantine
with exact restore, attachment discovery, the inotify watcher and the scan."""

import asyncio
import functools
import http.server
import json
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cni_operator.api import BinarySource, DeclaredBinary
from cni_operator.node import binaries
from cni_operator.node.atomic import atomic_write, sha256_bytes, sha256_file
from cni_operator.node.attachments import scan_attachments
from cni_operator.node.manifest import ManagedNetwork, Manifest, load, save
from cni_operator.node.own_binaries import DirectorySource, LauncherSource
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine
from cni_operator.node.scan import scan_node
from cni_operator.node.watcher import IN_CREATE, IN_DELETE, DirectoryWatcher, DirEvent

from tests.faults import run_child

REFERENCE = Path("/usr/lib/cni")
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "bridge").exists(),
    reason="containernetworking-plugins not installed (make debs)",
)


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    paths = HostPaths(tmp_path / "host")
    paths.ensure()
    return paths


def tiny_plugin(path: Path, versions: list[str]) -> None:
    answer = json.dumps({"cniVersion": versions[-1], "supportedVersions": versions})
    path.write_text(
        f"#!/bin/sh\nif [ \"$CNI_COMMAND\" = VERSION ]; then echo '{answer}'; exit 0; fi\nexit 1\n"
    )
    path.chmod(0o755)


def conflist(name: str, kind: str = "bridge", version: str = "1.0.0") -> bytes:
    body = {
        "cniVersion": version,
        "name": name,
        "plugins": [{"type": kind, "ipam": {"type": "host-local"}}],
    }
    return json.dumps(body).encode()


def test_atomic_write_leaves_no_temp_and_replaces(host: HostPaths) -> None:
    target = host.conf_dir / "10-a.conflist"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(host.conf_dir) == ["10-a.conflist"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_atomic_write_temp_name_is_invisible_to_runtimes(
    host: HostPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.extend(os.listdir(host.conf_dir))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write(host.conf_dir / "10-a.conflist", b"{}")
    (temp,) = seen
    assert temp.startswith(".") and temp.endswith(".tmp")
    assert not temp.endswith((".conf", ".conflist", ".json"))


@needs_reference
def test_probe_versions_of_reference_plugins_and_a_tiny_one(tmp_path: Path) -> None:
    versions = binaries.probe_versions(REFERENCE / "bridge")
    assert versions is not None and "1.0.0" in versions and "1.1.0" not in versions
    tiny = tmp_path / "tiny"
    tiny_plugin(tiny, ["1.1.0"])
    assert binaries.probe_versions(tiny) == ["1.1.0"]
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho nope\n")
    broken.chmod(0o755)
    assert binaries.probe_versions(broken) is None


def test_install_is_verified_and_never_overwrites_foreign_files(host: HostPaths) -> None:
    manifest = Manifest()
    result = binaries.install(host, manifest, "cniwarden-x", b"#!/bin/sh\n", "test")
    assert result.installed and result.changed
    assert manifest.binaries["cniwarden-x"].sha256 == sha256_bytes(b"#!/bin/sh\n")
    assert os.access(host.bin_dir / "cniwarden-x", os.X_OK)
    again = binaries.install(host, manifest, "cniwarden-x", b"#!/bin/sh\n", "test")
    assert again.installed and not again.changed

    foreign = host.bin_dir / "bridge"
    foreign.write_bytes(b"someone else's bridge")
    refused = binaries.install(host, manifest, "bridge", b"ours", "test")
    assert not refused.installed and "not ours" in refused.message
    assert foreign.read_bytes() == b"someone else's bridge"
    assert "bridge" not in manifest.binaries

    removed = binaries.uninstall_unused(host, manifest, keep=[])
    assert removed == ["cniwarden-x"]
    assert not (host.bin_dir / "cniwarden-x").exists()
    assert foreign.exists()


def test_declared_binary_sha_is_checked(tmp_path: Path) -> None:
    source = tmp_path / "plugin"
    source.write_bytes(b"plugin bytes")
    good = DeclaredBinary(
        name="p", sha256=sha256_bytes(b"plugin bytes"), source=BinarySource(file=str(source))
    )
    assert binaries.fetch_declared(good) == b"plugin bytes"
    bad = DeclaredBinary(name="p", sha256="0" * 64, source=BinarySource(file=str(source)))
    with pytest.raises(binaries.BinaryError, match="sha256 of the source"):
        binaries.fetch_declared(bad)


def test_launcher_source_points_at_this_python(tmp_path: Path) -> None:
    source = LauncherSource(python="/opt/py/bin/python3")
    for name, script in source.binaries().items():
        assert name.startswith("cniwarden-")
        assert script.startswith(b"#!/opt/py/bin/python3\n")
        assert b"from node_plugin" in script
    assert {"cniwarden-bridge", "cniwarden-host-local"} <= set(source.binaries())
    tiny_plugin(tmp_path / "cniwarden-shim", ["1.1.0"])
    (tmp_path / "not-ours").write_text("x")
    assert list(DirectorySource(tmp_path).binaries()) == ["cniwarden-shim"]


def test_manifest_round_trip(host: HostPaths) -> None:
    manifest = Manifest()
    manifest.networks["n"] = ManagedNetwork("10-n.conflist", "ab", 3, {"priority": 10})
    save(host, manifest)
    assert load(host) == manifest
    assert load(HostPaths(host.root / "nothing")) == Manifest()


def test_quarantine_and_exact_restore(host: HostPaths) -> None:
    original = host.conf_dir / "00-podman.conflist"
    payload = conflist("podman") + b"\n  \n"
    original.write_bytes(payload)
    quarantine = Quarantine(host)
    entry = quarantine.quarantine(original, "podnet")
    assert not original.exists()
    assert entry.original == "/etc/cni/net.d/00-podman.conflist"
    assert entry.sha256 == sha256_bytes(payload)
    stored = host.root / entry.stored.lstrip("/")
    assert stored.read_bytes() == payload
    assert not stored.name.endswith((".conf", ".conflist", ".json"))
    assert [e.stored for e in quarantine.entries()] == [entry.stored]

    (outcome,) = quarantine.restore("podnet")
    assert outcome.restored
    assert original.read_bytes() == payload
    assert quarantine.entries() == []
    assert not stored.exists()
    journal = host.journal.read_text().splitlines()
    assert [json.loads(line)["op"] for line in journal] == ["moving", "quarantine", "restore"]


def test_restore_never_overwrites_a_new_file(host: HostPaths) -> None:
    original = host.conf_dir / "00-x.conflist"
    original.write_bytes(b"old")
    quarantine = Quarantine(host)
    quarantine.quarantine(original, "net")
    original.write_bytes(b"new")
    (outcome,) = quarantine.restore()
    assert not outcome.restored and "another file" in outcome.message
    assert original.read_bytes() == b"new"
    assert len(quarantine.entries()) == 1
    assert quarantine.restore("other-network") == []


def test_attachments_from_leases_and_result_cache(host: HostPaths) -> None:
    store = host.networks_dir / "podnet"
    store.mkdir(parents=True)
    (store / "10.1.0.2").write_text("c1\r\neth0")
    (store / "10.1.0.3").write_text("c2\r\neth0")
    (store / "last_reserved_ip.0").write_text("10.1.0.3")
    (store / "lock").write_text("")
    host.results_dir.mkdir(parents=True)
    cache = {"kind": "cniCacheV1", "containerId": "c1", "ifName": "eth0", "networkName": "podnet"}
    (host.results_dir / "podnet-c1-eth0").write_text(json.dumps(cache))
    other = {**cache, "containerId": "c9", "networkName": "other"}
    (host.results_dir / "other-c9-eth0").write_text(json.dumps(other))
    (host.results_dir / "podnet-c5-eth0").write_text("")
    scan = scan_attachments(host)
    assert scan.by_network == {
        "podnet": {("c1", "eth0"), ("c2", "eth0")},
        "other": {("c9", "eth0")},
    }
    assert scan.count("podnet") == 2 and scan.count("none") == 0
    assert scan.empty_cache_files == [str(host.results_dir / "podnet-c5-eth0")]


async def events_until(watcher: DirectoryWatcher, name: str, mask: int = 0) -> list[DirEvent]:
    """Events until one for `name` (with `mask`, if given) is among them. The
    deadline is only a backstop: events already queued are read at once."""
    seen: list[DirEvent] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen += await watcher.wait(timeout=1)
        if any(e.name == name and (e.mask & mask or not mask) for e in seen):
            return seen
    raise AssertionError(f"no event for {name!r} (mask {mask:#x}) in 30s: {seen}")


def test_watcher_sees_new_files_and_a_recreated_dir(host: HostPaths) -> None:
    async def run() -> None:
        watcher = DirectoryWatcher([host.conf_dir, host.bin_dir])
        try:
            assert await watcher.wait(timeout=0.05) == []
            (host.conf_dir / "00-x.conflist").write_text("{}")
            await events_until(watcher, "00-x.conflist")
            shutil.rmtree(host.conf_dir)
            # An entry's removal is reported at once, whoever else holds the directory.
            await events_until(watcher, "00-x.conflist", IN_DELETE)
            # The directory's own removal is known on the next rearm, without waiting
            # for the kernel's IN_DELETE_SELF (which a holder of the directory defers).
            watcher.rearm()
            assert watcher.missing == [host.conf_dir]
            host.conf_dir.mkdir()
            watcher.rearm()
            assert watcher.missing == []
            (host.conf_dir / "01-y.conf").write_text("{}")
            events = await events_until(watcher, "01-y.conf")
            assert {e.directory for e in events if e.name == "01-y.conf"} == {host.conf_dir}
        finally:
            watcher.close()

    asyncio.run(run())


def test_watcher_follows_a_recreated_dir_that_something_still_holds(host: HostPaths) -> None:
    """`cd /etc/cni/net.d; rm -rf /etc/cni/net.d; mkdir /etc/cni/net.d`: the shell's
    working directory keeps the old directory alive, so the kernel says nothing of its
    removal until the shell leaves. The watch must move to the new directory anyway."""

    async def run() -> None:
        watcher = DirectoryWatcher([host.conf_dir])
        holder = subprocess.Popen(["sleep", "600"], cwd=host.conf_dir)
        try:
            shutil.rmtree(host.conf_dir)
            host.conf_dir.mkdir()
            assert await watcher.wait(timeout=0.2) == []  # no IN_DELETE_SELF: it is held
            watcher.rearm()
            assert watcher.missing == []
            (host.conf_dir / "00-late.conflist").write_text("{}")
            events = await events_until(watcher, "00-late.conflist", IN_CREATE)
            assert all(e.directory == host.conf_dir for e in events)
            # When the holder lets go, the old watch's last words are ignored.
            holder.kill()
            holder.wait()
            assert watcher.missing == []
            (host.conf_dir / "01-later.conf").write_text("{}")
            await events_until(watcher, "01-later.conf", IN_CREATE)
            assert watcher.missing == []
        finally:
            holder.kill()
            holder.wait()
            watcher.close()

    asyncio.run(run())


@needs_reference
def test_scan_reports_each_problem_with_a_fix(host: HostPaths) -> None:
    for name in ("bridge", "host-local"):
        shutil.copy(REFERENCE / name, host.bin_dir / name)
    ours = conflist("podnet")
    (host.conf_dir / "10-podnet.conflist").write_bytes(ours)
    manifest = Manifest(
        networks={"podnet": ManagedNetwork("10-podnet.conflist", sha256_bytes(ours), 1, {})}
    )
    prober = binaries.VersionProber()
    clean = scan_node(host, manifest, prober)
    assert clean.problems == [] and not clean.broken
    assert clean.analysis.containerd.ours

    (host.conf_dir / "00-podman.conflist").write_bytes(conflist("podman"))
    (host.conf_dir / "05-trunc.conflist").write_bytes(conflist("t")[:30])
    (host.conf_dir / "50-calico.conflist").write_bytes(conflist("calico", kind="calico"))
    (host.conf_dir / "60-new.conflist").write_bytes(conflist("new", version="1.1.0"))
    scan = scan_node(host, manifest, prober)
    codes = {(p.code, p.severity, Path(p.path or "").name) for p in scan.problems}
    assert ("ForeignConfigWins", "error", "00-podman.conflist") in codes
    assert ("MissingBinary", "warning", "50-calico.conflist") in codes
    assert ("IncompatibleVersion", "warning", "60-new.conflist") in codes
    # containerd stops at the valid 00-podman file, so the truncated one is latent.
    assert ("InvalidConfig", "warning", "05-trunc.conflist") in codes
    assert all(p.fix for p in scan.problems)
    assert not scan.broken

    (host.conf_dir / "00-podman.conflist").unlink()
    scan = scan_node(host, manifest, prober)
    killer = next(p for p in scan.problems if p.code == "InvalidConfig")
    assert killer.severity == "error" and "node-killer" in killer.message
    assert scan.broken
    assert sha256_file(host.conf_dir / "10-podnet.conflist") == sha256_bytes(ours)


def test_same_path_quarantined_twice_restores_the_latest(host: HostPaths) -> None:
    original = host.conf_dir / "01-late.conf"
    quarantine = Quarantine(host)
    original.write_bytes(b"")  # caught while its writer had only created it
    first = quarantine.quarantine(original, "net")
    original.write_bytes(b"finished")
    quarantine.quarantine(original, "net")
    outcomes = quarantine.restore("net")
    assert original.read_bytes() == b"finished"
    assert quarantine.entries() == []
    assert [o.restored for o in outcomes] == [False, True]
    assert (host.root / first.stored.lstrip("/")).exists(), "older copy kept, not deleted"


def test_final_restore_never_blocks_on_a_conflict(host: HostPaths) -> None:
    original = host.conf_dir / "00-x.conflist"
    original.write_bytes(b"old")
    quarantine = Quarantine(host)
    entry = quarantine.quarantine(original, "net")
    original.write_bytes(b"new")
    (outcome,) = quarantine.restore("net", final=True)
    assert not outcome.restored
    assert original.read_bytes() == b"new"
    assert quarantine.entries() == []
    assert (host.root / entry.stored.lstrip("/")).read_bytes() == b"old"


def test_declared_binary_from_a_url_is_verified(tmp_path: Path) -> None:
    (tmp_path / "plugin").write_bytes(b"served plugin")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/plugin"
        good = DeclaredBinary(
            name="p", sha256=sha256_bytes(b"served plugin"), source=BinarySource(url=url)
        )
        assert binaries.fetch_declared(good) == b"served plugin"
        bad = DeclaredBinary(name="p", sha256="1" * 64, source=BinarySource(url=url))
        with pytest.raises(binaries.BinaryError, match="not installed"):
            binaries.fetch_declared(bad)
    finally:
        server.shutdown()
        server.server_close()


def test_install_refuses_a_binary_that_does_not_read_back_as_written(host: HostPaths) -> None:
    """The read-back check, exercised: another writer changes the file between its
    rename into place and the agent's read-back (at that exact call, through
    tests/faults.py), and the install fails naming both digests."""
    data = b"#!/bin/sh\necho ours\n"
    target = host.bin_dir / "cniwarden-x"

    def install() -> None:
        binaries.install(host, Manifest(), "cniwarden-x", data, "test")

    def tamper() -> None:
        with target.open("r+b") as handle:
            handle.write(b"#!/bin/sh\necho evil\n")

    probe = run_child(install)
    assert probe.error is None and target.read_bytes() == data
    target.unlink()
    renamed = next(i for i, e in enumerate(probe.events, 1) if e.startswith("os.rename"))
    read_back = next(
        i for i, e in enumerate(probe.events, 1) if i > renamed and e.startswith(f"open {target} ")
    )
    run = run_child(install, act_at=read_back, action=tamper)
    assert run.error is not None, "the tampered binary was accepted"
    tampered = sha256_bytes(b"#!/bin/sh\necho evil\n")
    assert f"wrote sha256 {sha256_bytes(data)} but read back {tampered}" in run.error
