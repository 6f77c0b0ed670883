"""Move foreign config files out of the runtime's directory, and put exactly them back.

The quarantine folder sits under our state dir, which no runtime reads. Each
move copies the file there (fsync), journals it with its sha256 and time, then
removes the original; a restore writes the journaled bytes back atomically
(verifying the sha256) unless someone has put a different file at that path
since, which is reported and left alone.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cni_operator.journal import (
    OP_DISCARD,
    OP_QUARANTINE,
    OP_RESTORE,
    JournalEntry,
    outstanding,
    parse_lines,
)
from cni_operator.kube_time import now_iso
from cni_operator.node.atomic import atomic_write, fsync_dir, remove, sha256_bytes, sha256_file
from cni_operator.node.paths import HostPaths


@dataclass(frozen=True)
class RestoreOutcome:
    entry: JournalEntry
    restored: bool
    message: str


class Quarantine:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    def _host_path(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.paths.root))

    def _local(self, host_path: str) -> Path:
        return self.paths.root / host_path.lstrip("/")

    def _append(self, entry: JournalEntry) -> None:
        self.paths.quarantine_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, entry.to_line().encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[JournalEntry]:
        try:
            text = self.paths.journal.read_text()
        except FileNotFoundError:
            return []
        return outstanding(parse_lines(text.splitlines(keepends=True)))

    def quarantine(self, file: Path, network: str) -> JournalEntry:
        data = file.read_bytes()
        digest = sha256_bytes(data)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        stored = (
            self.paths.quarantine_dir / f"{stamp}-{secrets.token_hex(3)}-{file.name}.quarantined"
        )
        self.paths.quarantine_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(stored, data, mode=0o600)
        entry = JournalEntry(
            OP_QUARANTINE,
            self._host_path(file),
            self._host_path(stored),
            digest,
            now_iso(),
            network,
        )
        self._append(entry)
        # Only remove the original if it is still the bytes we saved.
        if file.exists() and sha256_file(file) == digest:
            remove(file)
        return entry

    def restore(self, network: str | None = None, *, final: bool = False) -> list[RestoreOutcome]:
        """Put back what was moved for `network` (every network when None).

        When one path was quarantined more than once (someone rewrote it after the
        first move), the latest copy is what the path held last and is the one
        restored; the older copies are retired from the journal but kept on disk.
        `final`: the network is going away, so a copy that cannot go back (another
        file now sits at its path) is retired too, left in the quarantine folder and
        reported, instead of holding the network's cleanup forever.
        """
        outcomes = []
        latest: dict[str, JournalEntry] = {}
        for entry in self.entries():
            if network is not None and entry.network != network:
                continue
            older = latest.get(entry.original)
            if older is not None:
                self._finish(older, OP_DISCARD, None)
                outcomes.append(
                    RestoreOutcome(
                        older, False, f"superseded by a later copy; kept at {older.stored}"
                    )
                )
            latest[entry.original] = entry
        for entry in latest.values():
            outcome = self._restore_one(entry)
            if not outcome.restored and final:
                self._finish(entry, OP_DISCARD, None)
            outcomes.append(outcome)
        return outcomes

    def _restore_one(self, entry: JournalEntry) -> RestoreOutcome:
        original, stored = self._local(entry.original), self._local(entry.stored)
        if original.exists():
            if sha256_file(original) == entry.sha256:
                self._finish(entry, OP_DISCARD, stored)
                return RestoreOutcome(entry, True, "already back in place")
            return RestoreOutcome(
                entry,
                False,
                f"{entry.original} now holds another file; the quarantined copy stays "
                f"at {entry.stored}",
            )
        try:
            data = stored.read_bytes()
        except FileNotFoundError:
            return RestoreOutcome(entry, False, f"{entry.stored} is gone")
        if sha256_bytes(data) != entry.sha256:
            return RestoreOutcome(entry, False, f"{entry.stored} changed since quarantine")
        original.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(original, data, mode=0o644)
        self._finish(entry, OP_RESTORE, stored)
        return RestoreOutcome(entry, True, "restored")

    def _finish(self, entry: JournalEntry, op: str, stored: Path | None) -> None:
        """Journal the end of an entry; `stored` (if given) is no longer needed."""
        self._append(
            JournalEntry(op, entry.original, entry.stored, entry.sha256, now_iso(), entry.network)
        )
        if stored is not None and stored.exists():
            stored.unlink()
            fsync_dir(stored.parent)
