"""Quarantine and restore (issue 11, items 4, 5 and 10): the file itself moves and
comes back with its mode, owner and mtime; a symlink moves as a symlink and its
target is never read; nothing put at the path meanwhile is deleted; a journal line
naming a path outside the conf dir is refused; a corrupt line is reported and
skipped; journal appends are whole lines or nothing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cni_operator.journal import KIND_FILE, KIND_SYMLINK, JournalEntry
from cni_operator.node import binaries
from cni_operator.node.atomic import sha256_bytes
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import STORE_NAME, Quarantine
from cni_operator.node.scan import scan_node

from tests.faults import run_child

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
PAYLOAD = b'{"cniVersion":"1.0.0","name":"podman","plugins":[{"type":"bridge"}]}\n'


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    paths = HostPaths(tmp_path / "host")
    paths.ensure()
    return paths


def every_regular_file(root: Path) -> dict[Path, bytes]:
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if stat.S_ISREG(path.lstat().st_mode):
                out[path] = path.read_bytes()
    return out


@needs_root
def test_restore_gives_back_mode_owner_and_mtime(host: HostPaths) -> None:
    original = host.conf_dir / "00-private.conflist"
    original.write_bytes(PAYLOAD)
    os.chmod(original, 0o600)
    os.chown(original, 1000, 1001)
    os.utime(original, ns=(1_600_000_000_000_000_000, 1_650_000_000_123_456_789))
    before = original.lstat()
    quarantine = Quarantine(host)
    entry = quarantine.quarantine(original, "podnet")
    assert not original.exists()
    assert entry.meta is not None
    assert (entry.meta.kind, entry.meta.mode, entry.meta.uid, entry.meta.gid) == (
        KIND_FILE,
        0o600,
        1000,
        1001,
    )
    assert entry.meta.mtime_ns == before.st_mtime_ns
    assert entry.stored.startswith(f"/etc/cni/net.d/{STORE_NAME}/")
    store = host.conf_dir / STORE_NAME
    assert stat.S_IMODE(store.lstat().st_mode) == 0o700
    # Someone changes the copy's metadata (not its bytes) meanwhile: the journal wins.
    (copy,) = store.iterdir()
    os.chmod(copy, 0o644)
    os.chown(copy, 0, 0)
    (outcome,) = quarantine.restore("podnet")
    assert outcome.restored, outcome.message
    after = original.lstat()
    assert original.read_bytes() == PAYLOAD
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid, after.st_mtime_ns) == (
        0o600,
        1000,
        1001,
        before.st_mtime_ns,
    )
    assert not store.exists() and quarantine.entries() == []


def test_a_symlink_moves_as_itself_and_its_target_is_never_read(
    host: HostPaths, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.conf"
    secret.write_bytes(b"TOP-SECRET-BYTES")
    os.chmod(secret, 0o600)
    link = host.conf_dir / "00-link.conflist"
    os.symlink(secret, link)
    quarantine = Quarantine(host)
    entry = quarantine.quarantine(link, "podnet")
    assert not os.path.lexists(link)
    assert entry.meta is not None and entry.meta.kind == KIND_SYMLINK
    assert entry.meta.target == str(secret)
    assert entry.sha256 == sha256_bytes(os.fsencode(str(secret)))
    copies = every_regular_file(host.root)
    assert not [p for p, data in copies.items() if b"TOP-SECRET" in data], "the secret was copied"
    (outcome,) = quarantine.restore("podnet")
    assert outcome.restored, outcome.message
    assert link.is_symlink() and os.readlink(link) == str(secret)
    assert not [p for p, d in every_regular_file(host.root).items() if b"TOP-SECRET" in d]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_file_put_at_the_path_during_a_quarantine_is_never_deleted(host: HostPaths) -> None:
    """At every file-system call of a quarantine, another writer renames a new file
    into the path. Whatever the moment, the newcomer survives (at the path, or as
    the journaled copy if it was what got moved), and so does the original once
    our move has begun. The old code deleted a newcomer that arrived between its
    hash check and its unlink."""
    original = host.conf_dir / "00-race.conflist"
    newcomer = b'{"cniVersion":"1.0.0","name":"late","plugins":[{"type":"x"}]}\n'

    def quarantine() -> None:
        Quarantine(host).quarantine(original, "podnet")

    def put_newcomer() -> None:
        temp = host.conf_dir / ".incoming"
        temp.write_bytes(newcomer)
        os.rename(temp, original)

    def reset() -> None:
        store = host.conf_dir / STORE_NAME
        for leftover in (*store.glob("*"), *host.conf_dir.glob("*.conflist")):
            leftover.unlink()
        host.journal.unlink(missing_ok=True)
        original.write_bytes(PAYLOAD)

    reset()
    probe = run_child(quarantine)
    moved_at = next(i for i, e in enumerate(probe.events, 1) if e.startswith("os.rename"))
    for point in range(1, probe.count + 1):
        reset()
        run = run_child(quarantine, act_at=point, action=put_newcomer)
        assert run.error is None, run.error
        journaled = {e.sha256 for e in Quarantine(host).entries()}
        at_path = original.read_bytes() if original.exists() else None
        survivors = [(newcomer, "the newcomer")]
        if point > moved_at:
            survivors.append((PAYLOAD, "the original"))
        for data, what in survivors:
            assert at_path == data or sha256_bytes(data) in journaled, (
                f"{what} was lost when the other writer acted at call {point} "
                f"({run.events[point - 1]})"
            )
    assert probe.count > moved_at, "calls after the move were tried too"


def test_restore_refuses_journaled_paths_outside_the_conf_dir(
    host: HostPaths, tmp_path: Path
) -> None:
    """Issue 11 item 10: a journal line with `../` wrote outside the host root."""
    outside = tmp_path / "escaped.conf"
    store = host.conf_dir / STORE_NAME
    store.mkdir(mode=0o700)
    (store / "a.quarantined").write_bytes(PAYLOAD)
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:x:0:0")
    digest = sha256_bytes(PAYLOAD)
    lines = [
        JournalEntry(
            "quarantine",
            "/etc/cni/net.d/../../../../escaped.conf",
            f"/etc/cni/net.d/{STORE_NAME}/a.quarantined",
            digest,
            "t",
            "podnet",
        ),
        JournalEntry(
            "quarantine",
            "/etc/cni/net.d/00-ok.conflist",
            f"/etc/cni/net.d/{STORE_NAME}/../../../../shadow",
            sha256_bytes(b"root:x:0:0"),
            "t",
            "podnet",
        ),
        JournalEntry("quarantine", "/etc/passwd", "/etc/x", digest, "t", "podnet"),
    ]
    host.journal.write_text("".join(e.to_line() for e in lines))
    outcomes = Quarantine(host).restore("podnet")
    assert [o.restored for o in outcomes] == [False, False, False]
    assert all(o.message.startswith("refused: the journal names") for o in outcomes)
    assert not outside.exists()
    assert not (host.conf_dir / "00-ok.conflist").exists()
    assert (store / "a.quarantined").read_bytes() == PAYLOAD, "the copy is kept"
    # A network going away retires such lines (nothing acted on), so they hold nothing.
    Quarantine(host).restore("podnet", final=True)
    assert Quarantine(host).entries() == []
    assert not outside.exists() and (store / "a.quarantined").exists()


def test_a_copy_journaled_by_an_older_agent_still_goes_back(host: HostPaths) -> None:
    stored = host.quarantine_dir / "20250101T000000-abcdef-00-old.conflist.quarantined"
    stored.write_bytes(PAYLOAD)
    os.chmod(stored, 0o600)
    legacy = {
        "op": "quarantine",
        "original": "/etc/cni/net.d/00-old.conflist",
        "stored": "/var/lib/cni/cniwarden/quarantine/" + stored.name,
        "sha256": sha256_bytes(PAYLOAD),
        "time": "2025-01-01T00:00:00Z",
        "network": "podnet",
    }
    host.journal.write_text(json.dumps(legacy) + "\n")
    (outcome,) = Quarantine(host).restore("podnet")
    assert outcome.restored, outcome.message
    restored = host.conf_dir / "00-old.conflist"
    assert restored.read_bytes() == PAYLOAD
    assert stat.S_IMODE(restored.stat().st_mode) == 0o644  # what older agents restored
    assert not stored.exists()


def test_a_corrupt_line_is_reported_and_every_other_entry_restores(host: HostPaths) -> None:
    """Issue 11 item 4: one corrupt line in the middle made every pass raise; now it
    is reported (with the copies no readable line names) and skipped."""
    quarantine = Quarantine(host)
    first = host.conf_dir / "00-a.conflist"
    first.write_bytes(PAYLOAD)
    quarantine.quarantine(first, "podnet")
    # What a corrupt line may have described: a copy no readable line names.
    orphan = host.conf_dir / STORE_NAME / "20250101T000000-abcdef-01-b.conflist.quarantined"
    orphan.write_bytes(b"lost record")
    lines = host.journal.read_text().splitlines(keepends=True)
    host.journal.write_text(lines[0] + '{"op": "quarantine", "original": \n' + lines[1])
    scan = scan_node(host, Manifest(), binaries.VersionProber())
    (problem,) = [p for p in scan.problems if p.code == "QuarantineJournalCorrupt"]
    assert problem.severity == "error"
    assert "1 corrupt line(s) skipped (line 2: " in problem.message
    assert orphan.name in problem.message
    assert [e.original for e in scan.quarantined] == ["/etc/cni/net.d/00-a.conflist"]
    outcomes = quarantine.restore("podnet")
    assert [o.restored for o in outcomes] == [True]
    assert first.read_bytes() == PAYLOAD
    assert orphan.read_bytes() == b"lost record", "never touched"
    assert not (host.conf_dir / "01-b.conflist").exists()


def test_journal_appends_loop_on_short_writes_and_cut_a_torn_tail(
    host: HostPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.journal.write_text('{"op": "moving", "orig')  # a crash mid-append
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:7]))

    original = host.conf_dir / "00-a.conflist"
    original.write_bytes(PAYLOAD)
    monkeypatch.setattr(os, "write", short_write)
    entry = Quarantine(host).quarantine(original, "podnet")
    monkeypatch.undo()
    text = host.journal.read_text()
    assert text.endswith("\n") and '"orig' not in text.split("\n")[0][:30]
    read = Quarantine(host).read()
    assert read.corrupt == []
    assert [e.op for e in read.entries] == ["moving", "quarantine"]
    assert Quarantine(host).entries() == [entry]


def test_an_interrupted_move_is_finished_on_recovery(host: HostPaths) -> None:
    """kill -9 after the rename, before its record: the copy is recorded on restart."""
    original = host.conf_dir / "00-a.conflist"

    def quarantine() -> None:
        Quarantine(host).quarantine(original, "podnet")

    original.write_bytes(PAYLOAD)
    probe = run_child(quarantine)
    moved_at = next(i for i, e in enumerate(probe.events, 1) if e.startswith("os.rename"))
    Quarantine(host).restore("podnet")
    host.journal.unlink()
    run = run_child(quarantine, kill_at=moved_at + 1)
    assert run.killed and not original.exists()
    assert Quarantine(host).entries() == []
    codes = [p.code for p in scan_node(host, Manifest(), binaries.VersionProber()).problems]
    assert "QuarantineMoveInterrupted" in codes
    assert Quarantine(host).recover() == [
        "/etc/cni/net.d/00-a.conflist: the interrupted move is recorded"
    ]
    (outcome,) = Quarantine(host).restore("podnet")
    assert outcome.restored and original.read_bytes() == PAYLOAD
