"""Move foreign config files out of the runtime's directory, and put exactly them back.

The file itself moves: it is renamed, never copied, into a hidden directory of
the conf dir (`.cniwarden-quarantine`, mode 0700, same filesystem: no runtime
reads a subdirectory, and a rename cannot lose or half-copy anything), and what
was moved is hashed afterwards. So nothing renamed into place meanwhile is ever
deleted, a symlink is moved as the symlink (its target is never opened, never
copied), and the inode keeps its mode, owner and mtime. A restore verifies the
stored file against the journal, re-applies the journaled metadata and links it
back without replacing anything that appeared at the path since (reported, left
alone), then retires the copy.

Every path is handled relative to an open directory (`dir_fd`) and by a single
name component, and journaled paths must be direct children of the conf dir or
of a quarantine folder, so neither a symlink nor a crafted journal line can
point a move or a restore anywhere else.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cni_operator.journal import (
    KIND_FILE,
    KIND_SYMLINK,
    OP_DISCARD,
    OP_MOVING,
    OP_QUARANTINE,
    OP_RESTORE,
    FileMeta,
    JournalEntry,
    JournalRead,
    interrupted_moves,
    outstanding,
    parse_lines,
)
from cni_operator.kube_time import now_iso
from cni_operator.node.paths import HostPaths

STORE_NAME = ".cniwarden-quarantine"


class QuarantineError(RuntimeError):
    """A move, a restore or a journal write that could not happen; nothing was lost."""


@dataclass(frozen=True)
class RestoreOutcome:
    entry: JournalEntry
    restored: bool
    message: str


def _single_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


@contextlib.contextmanager
def _dir_fd(path: Path, *, follow: bool = True) -> Iterator[int]:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def _identity(dir_fd: int, name: str, st: os.stat_result) -> tuple[str, str] | None:
    """(kind, sha256) of a directory entry without following it: the bytes of a
    regular file, the target of a symlink; None for anything else."""
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        return KIND_SYMLINK, hashlib.sha256(os.fsencode(target)).hexdigest()
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
    finally:
        os.close(fd)
    return KIND_FILE, digest.hexdigest()


def _meta(dir_fd: int, name: str, st: os.stat_result) -> FileMeta:
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    kind = KIND_SYMLINK if target is not None else KIND_FILE
    return FileMeta(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, target)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Quarantine:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    @property
    def store(self) -> Path:
        return self.paths.conf_dir / STORE_NAME

    # ------------------------------------------------------------- journal
    def read(self) -> JournalRead:
        try:
            data = self.paths.journal.read_bytes()
        except FileNotFoundError:
            return JournalRead()
        text = data.decode("utf-8", "replace")
        return parse_lines(text.splitlines(keepends=True))

    def entries(self) -> list[JournalEntry]:
        """Quarantined files waiting to go back (corrupt lines skipped)."""
        return outstanding(self.read().entries)

    def _append(self, entry: JournalEntry) -> None:
        """Append one line, whole or not at all: the writes loop on short writes, a
        torn tail left by a crash is cut first (what it recorded never finished),
        and a failed write (a full disk) is cut back before the error is raised."""
        line = entry.to_line().encode()
        try:
            self.paths.quarantine_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(
                self.paths.journal, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as error:
            raise QuarantineError(
                f"cannot open the journal {self.paths.journal}: {error}"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
                size = max(0, size - len(tail)) + tail.rfind(b"\n") + 1
                os.ftruncate(fd, size)
            try:
                write_all(fd, line)
                os.fsync(fd)
            except OSError as error:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise QuarantineError(
                    f"cannot append to the journal {self.paths.journal}: {error.strerror or error}"
                    f" (op {entry.op} of {entry.original}; nothing was moved or lost)"
                ) from None
        finally:
            os.close(fd)

    def copies(self) -> list[str]:
        """Host paths of every copy in the quarantine folders (the journal aside)."""
        found = []
        for folder in (self.store, self.paths.quarantine_dir):
            try:
                names = sorted(os.listdir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            found += [self._host(folder / n) for n in names if folder / n != self.paths.journal]
        return found

    # ---------------------------------------------------------- locations
    def _host(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.paths.root))

    def original_name(self, host_path: str) -> str | None:
        """The conf-dir entry a journaled path names, if it is a direct child."""
        conf = self._host(self.paths.conf_dir)
        parent, _, name = host_path.rpartition("/")
        return name if parent == conf and _single_name(name) else None

    def _stored_place(self, host_path: str) -> tuple[Path, str] | None:
        """(folder, name) of a journaled copy: a direct child of the store or of the
        state dir's quarantine folder (where agents before this one copied files)."""
        parent, _, name = host_path.rpartition("/")
        if not _single_name(name):
            return None
        for folder in (self.store, self.paths.quarantine_dir):
            if parent == self._host(folder):
                return folder, name
        return None

    def _open_store(self, conf_fd: int) -> int:
        """The store's fd: created 0700 if missing; never a symlink."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(STORE_NAME, 0o700, dir_fd=conf_fd)
        fd = os.open(
            STORE_NAME, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=conf_fd
        )
        os.fchmod(fd, 0o700)
        return fd

    # ---------------------------------------------------------- quarantine
    def quarantine(self, file: Path, network: str) -> JournalEntry:
        """Move `file` (an entry of the conf dir) into the store and journal it."""
        if file.parent != self.paths.conf_dir or not _single_name(file.name):
            raise QuarantineError(f"{file} is not an entry of {self.paths.conf_dir}")
        name = file.name
        with _dir_fd(self.paths.conf_dir) as conf_fd:
            st = os.lstat(name, dir_fd=conf_fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise QuarantineError(f"{file} is not a regular file or a symlink; not moved")
            store_fd = self._open_store(conf_fd)
            try:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
                stored_name = f"{stamp}-{secrets.token_hex(3)}-{name}.quarantined"
                intent = JournalEntry(
                    OP_MOVING,
                    self._host(file),
                    self._host(self.store / stored_name),
                    "",
                    now_iso(),
                    network,
                )
                self._append(intent)
                try:
                    os.rename(name, stored_name, src_dir_fd=conf_fd, dst_dir_fd=store_fd)
                except OSError:
                    with contextlib.suppress(QuarantineError):
                        self._append(self._retired(intent, OP_DISCARD))
                    raise
                os.fsync(store_fd)
                os.fsync(conf_fd)
                return self._complete(intent, store_fd, stored_name)
            finally:
                os.close(store_fd)

    def _complete(self, intent: JournalEntry, store_fd: int, stored_name: str) -> JournalEntry:
        """Record what an intent moved: hashed and described after the move."""
        st = os.lstat(stored_name, dir_fd=store_fd)
        identity = _identity(store_fd, stored_name, st)
        if identity is None:
            raise QuarantineError(f"{intent.stored} is not a regular file or a symlink")
        entry = JournalEntry(
            OP_QUARANTINE,
            intent.original,
            intent.stored,
            identity[1],
            now_iso(),
            intent.network,
            _meta(store_fd, stored_name, st),
        )
        self._append(entry)
        return entry

    def _retired(self, entry: JournalEntry, op: str) -> JournalEntry:
        return JournalEntry(
            op, entry.original, entry.stored, entry.sha256, now_iso(), entry.network, entry.meta
        )

    def recover(self) -> list[str]:
        """Finish what a crash (or a full disk) interrupted: a move whose copy reached
        the store is recorded now, an intent whose move never happened is retired,
        and the copy of a restored entry (a second link to the restored file) goes."""
        done = []
        entries = self.read().entries
        for entry in entries:
            place = self._stored_place(entry.stored) if entry.op == OP_RESTORE else None
            if place is not None:
                with contextlib.suppress(FileNotFoundError), _dir_fd(place[0], follow=False) as fd:
                    os.unlink(place[1], dir_fd=fd)
                    done.append(f"{entry.original}: removed the copy of a finished restore")
        for intent in interrupted_moves(entries):
            place = self._stored_place(intent.stored)
            if place is None or self.original_name(intent.original) is None:
                continue  # not ours to touch; the journal problem says so
            folder, stored_name = place
            try:
                with _dir_fd(folder, follow=False) as store_fd:
                    try:
                        os.lstat(stored_name, dir_fd=store_fd)
                    except FileNotFoundError:
                        self._append(self._retired(intent, OP_DISCARD))
                        done.append(f"{intent.original}: the interrupted move never happened")
                        continue
                    self._complete(intent, store_fd, stored_name)
                    done.append(f"{intent.original}: the interrupted move is recorded")
            except FileNotFoundError:
                self._append(self._retired(intent, OP_DISCARD))
        if done:
            self._drop_empty_store()
        return done

    # -------------------------------------------------------------- restore
    def restore(self, network: str | None = None, *, final: bool = False) -> list[RestoreOutcome]:
        """Put back what was moved for `network` (every network when None).

        When one path was quarantined more than once (someone rewrote it after the
        first move), the latest copy is what the path held last and is the one
        restored; the older copies are retired from the journal but kept on disk.
        `final`: the network is going away, so a copy that cannot go back (another
        file now sits at its path) is retired too, left in the quarantine folder and
        reported, instead of holding the network's cleanup forever. A journal line
        naming a path outside the conf dir is never acted on.
        """
        outcomes = []
        latest: dict[str, JournalEntry] = {}
        for entry in self.entries():
            if network is not None and entry.network != network:
                continue
            older = latest.get(entry.original)
            if older is not None:
                try:
                    self._finish(older, OP_DISCARD, remove_copy=False)
                    message = f"superseded by a later copy; kept at {older.stored}"
                except QuarantineError as error:
                    message = f"superseded by a later copy, not retired: {error}"
                outcomes.append(RestoreOutcome(older, False, message))
            latest[entry.original] = entry
        for entry in latest.values():
            try:
                outcome = self._restore_one(entry)
            except (OSError, QuarantineError) as error:
                outcome = RestoreOutcome(entry, False, f"not restored: {error}")
            if not outcome.restored and final:
                with contextlib.suppress(QuarantineError):
                    self._finish(entry, OP_DISCARD, remove_copy=False)
            outcomes.append(outcome)
        self._drop_empty_store()
        return outcomes

    def _drop_empty_store(self) -> None:
        """No trace in the conf dir once nothing is quarantined."""
        with contextlib.suppress(OSError), _dir_fd(self.paths.conf_dir) as conf_fd:
            os.rmdir(STORE_NAME, dir_fd=conf_fd)

    def _restore_one(self, entry: JournalEntry) -> RestoreOutcome:
        name = self.original_name(entry.original)
        place = self._stored_place(entry.stored)
        if name is None or place is None:
            return RestoreOutcome(
                entry,
                False,
                f"refused: the journal names {entry.original} and {entry.stored}, which are "
                f"not a direct child of {self._host(self.paths.conf_dir)} and of a "
                "quarantine folder",
            )
        folder, stored_name = place
        kind = entry.meta.kind if entry.meta is not None else KIND_FILE
        with contextlib.ExitStack() as stack:
            conf_fd = stack.enter_context(_dir_fd(self.paths.conf_dir))
            try:
                present = os.lstat(name, dir_fd=conf_fd)
            except FileNotFoundError:
                present = None
            if present is not None:
                if _identity(conf_fd, name, present) == (kind, entry.sha256):
                    self._finish(entry, OP_RESTORE)
                    return RestoreOutcome(entry, True, "already back in place")
                return RestoreOutcome(
                    entry,
                    False,
                    f"{entry.original} now holds another file; the quarantined copy stays "
                    f"at {entry.stored}",
                )
            try:
                store_fd = stack.enter_context(_dir_fd(folder, follow=False))
                st = os.lstat(stored_name, dir_fd=store_fd)
            except FileNotFoundError:
                return RestoreOutcome(entry, False, f"{entry.stored} is gone")
            if _identity(store_fd, stored_name, st) != (kind, entry.sha256):
                return RestoreOutcome(entry, False, f"{entry.stored} changed since quarantine")
            if entry.meta is not None:
                self._apply_meta(store_fd, stored_name, entry.meta)
            else:
                os.chmod(stored_name, 0o644, dir_fd=store_fd)  # as agents before metadata did
            try:
                os.link(
                    stored_name,
                    name,
                    src_dir_fd=store_fd,
                    dst_dir_fd=conf_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                return RestoreOutcome(
                    entry,
                    False,
                    f"{entry.original} appeared meanwhile; the quarantined copy stays "
                    f"at {entry.stored}",
                )
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
                self._copy_back(entry, store_fd, stored_name, conf_fd, name)
            os.fsync(conf_fd)
        try:
            self._finish(entry, OP_RESTORE)
        except QuarantineError as error:
            # Back in place; the next restore finds it there and records that.
            return RestoreOutcome(entry, True, f"restored, not yet journaled: {error}")
        return RestoreOutcome(entry, True, "restored")

    @staticmethod
    def _apply_meta(dir_fd: int, name: str, meta: FileMeta) -> None:
        """Mode, owner and mtime exactly as journaled (a symlink has no mode of its own)."""
        st = os.lstat(name, dir_fd=dir_fd)
        if meta.kind == KIND_FILE:
            os.chmod(name, meta.mode, dir_fd=dir_fd)
        if (st.st_uid, st.st_gid) != (meta.uid, meta.gid):
            os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False)
        os.utime(name, ns=(st.st_atime_ns, meta.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    def _copy_back(
        self, entry: JournalEntry, store_fd: int, stored_name: str, conf_fd: int, name: str
    ) -> None:
        """A copy journaled by an agent before this one sits on another filesystem (the
        state dir): its verified bytes go back through a temp name, never over a file."""
        meta = entry.meta or FileMeta(KIND_FILE, 0o644, os.getuid(), os.getgid(), 0)
        if meta.kind != KIND_FILE:
            raise QuarantineError(f"{entry.stored}: a symlink cannot be copied back")
        source = os.open(stored_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store_fd)
        temp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            target = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=conf_fd
            )
            try:
                while chunk := os.read(source, 1 << 20):
                    write_all(target, chunk)
                os.fsync(target)
            finally:
                os.close(target)
            if entry.meta is not None:
                self._apply_meta(conf_fd, temp, meta)
            else:
                os.chmod(temp, 0o644, dir_fd=conf_fd)
            os.link(temp, name, src_dir_fd=conf_fd, dst_dir_fd=conf_fd, follow_symlinks=False)
        finally:
            os.close(source)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=conf_fd)

    def _finish(self, entry: JournalEntry, op: str, *, remove_copy: bool = True) -> None:
        """Journal the end of an entry; then its copy (if `remove_copy`) goes. A
        `restore` always drops the copy (recover() finishes that after a crash); a
        `discard` keeps it (superseded, or in conflict with a newer file)."""
        self._append(self._retired(entry, op))
        place = self._stored_place(entry.stored)
        if not remove_copy or place is None:
            return
        folder, stored_name = place
        with contextlib.suppress(FileNotFoundError), _dir_fd(folder, follow=False) as fd:
            os.unlink(stored_name, dir_fd=fd)
            os.fsync(fd)
