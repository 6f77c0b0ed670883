"""The quarantine journal: one JSON object per line, appended, never rewritten.

Every move of a foreign file out of the runtime's directory is recorded before
it happens (`moving`: the intent, so a crash right after the move is finished on
restart) and after (`quarantine`: the sha256 of what was moved, and the file's
kind, mode, owner, mtime and a symlink's target), so a restore puts back exactly
that file. `restore` and `discard` end an entry.

A line that does not parse is reported and skipped, never guessed at: it cannot
say which file it meant, so nothing it described is restored automatically
(the restore of every other entry goes on). Pure: formatting and replay only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

OP_MOVING = "moving"
OP_QUARANTINE = "quarantine"
OP_RESTORE = "restore"
OP_DISCARD = "discard"
OPS = (OP_MOVING, OP_QUARANTINE, OP_RESTORE, OP_DISCARD)

KIND_FILE = "file"
KIND_SYMLINK = "symlink"


@dataclass(frozen=True)
class FileMeta:
    """What a restore gives back besides the bytes."""

    kind: str  # KIND_FILE | KIND_SYMLINK
    mode: int  # permission bits
    uid: int
    gid: int
    mtime_ns: int
    target: str | None = None  # a symlink's target, as readlink(2) gave it

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FileMeta:
        kind = raw["kind"]
        if kind not in (KIND_FILE, KIND_SYMLINK):
            raise ValueError(f"unknown kind {kind!r}")
        numbers = {}
        for key in ("mode", "uid", "gid", "mtime_ns"):
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer")
            numbers[key] = value
        target = raw.get("target")
        if (kind == KIND_SYMLINK) != isinstance(target, str):
            raise ValueError("a symlink, and only a symlink, has a target")
        return cls(kind, target=target, **numbers)


@dataclass(frozen=True)
class JournalEntry:
    op: str
    original: str
    stored: str
    sha256: str
    time: str
    network: str
    meta: FileMeta | None = None  # None: an intent, or a line from before metadata

    def to_line(self) -> str:
        raw = asdict(self)
        if self.meta is None:
            del raw["meta"]
        return json.dumps(raw, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: Any) -> JournalEntry:
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        texts = {}
        for key in ("op", "original", "stored", "sha256", "time", "network"):
            value = raw[key]
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a string")
            texts[key] = value
        if texts["op"] not in OPS:
            raise ValueError(f"unknown op {texts['op']!r}")
        meta = raw.get("meta")
        return cls(**texts, meta=None if meta is None else FileMeta.from_dict(meta))


@dataclass(frozen=True)
class CorruptLine:
    number: int  # 1-based
    error: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.error}"


@dataclass
class JournalRead:
    entries: list[JournalEntry] = field(default_factory=list)
    corrupt: list[CorruptLine] = field(default_factory=list)


def parse_lines(lines: Iterable[str]) -> JournalRead:
    """Parse a journal. A torn last line (a crash mid-append) is ignored; any other
    bad line is reported in `corrupt` and skipped."""
    read = JournalRead()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    for index, (number, line) in enumerate(numbered):
        try:
            read.entries.append(JournalEntry.from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if index == len(numbered) - 1 and not line.endswith("\n"):
                break
            detail = f"missing {error}" if isinstance(error, KeyError) else str(error)
            read.corrupt.append(CorruptLine(number, detail[:200]))
    return read


def outstanding(entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    """Quarantined files not yet restored or discarded, keyed by stored path."""
    live: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.op == OP_QUARANTINE:
            live[entry.stored] = entry
        elif entry.op in (OP_RESTORE, OP_DISCARD):
            live.pop(entry.stored, None)
    return list(live.values())


def interrupted_moves(entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    """Intents (`moving`) that no later line completes or retires: a crash (or a full
    disk) came between the intent and the record of what was moved."""
    pending: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.op == OP_MOVING:
            pending[entry.stored] = entry
        else:
            pending.pop(entry.stored, None)
    return list(pending.values())
