"""The quarantine journal: one JSON object per line, appended, never rewritten.

Every move of a foreign file out of the runtime's directory is recorded before
and after it happens (path, sha256, time, the network whose policy asked for
it), so a restore puts back exactly those files, byte for byte, even after a
crash between the two steps. Pure: formatting and replay only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

OP_QUARANTINE = "quarantine"
OP_RESTORE = "restore"
OP_DISCARD = "discard"


@dataclass(frozen=True)
class JournalEntry:
    op: str
    original: str
    stored: str
    sha256: str
    time: str
    network: str

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"


class JournalError(ValueError):
    pass


def parse_lines(lines: Iterable[str]) -> list[JournalEntry]:
    """Parse a journal. A torn last line (crash mid-append) is ignored; any
    other bad line is an error, because guessing could restore the wrong file."""
    entries = []
    pending = [line for line in lines if line.strip()]
    for index, line in enumerate(pending):
        try:
            raw = json.loads(line)
            entries.append(
                JournalEntry(**{k: str(raw[k]) for k in JournalEntry.__dataclass_fields__})
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            if index == len(pending) - 1 and not line.endswith("\n"):
                break
            raise JournalError(f"journal line {index + 1} is corrupt: {error}") from None
    return entries


def outstanding(entries: Iterable[JournalEntry]) -> list[JournalEntry]:
    """Quarantined files not yet restored or discarded, keyed by stored path."""
    live: dict[str, JournalEntry] = {}
    for entry in entries:
        if entry.op == OP_QUARANTINE:
            live[entry.stored] = entry
        elif entry.op in (OP_RESTORE, OP_DISCARD):
            live.pop(entry.stored, None)
    return list(live.values())
