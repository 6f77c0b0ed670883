"""The quarantine journal format."""

import json

import pytest
from cni_operator.journal import (
    KIND_FILE,
    KIND_SYMLINK,
    FileMeta,
    JournalEntry,
    interrupted_moves,
    outstanding,
    parse_lines,
)

META = FileMeta(KIND_FILE, 0o600, 1000, 1000, 1_700_000_000_123_456_789)


def entry(op: str, stored: str, meta: FileMeta | None = META) -> JournalEntry:
    return JournalEntry(op, "/etc/cni/net.d/00-x.conflist", stored, "ab" * 32, "t", "net", meta)


def test_round_trip_and_outstanding() -> None:
    lines = [
        entry("quarantine", "/q/1").to_line(),
        entry("quarantine", "/q/2").to_line(),
        entry("restore", "/q/1").to_line(),
    ]
    parsed = parse_lines(lines)
    assert parsed.entries[0] == entry("quarantine", "/q/1")
    assert parsed.corrupt == []
    assert [e.stored for e in outstanding(parsed.entries)] == ["/q/2"]
    link = FileMeta(KIND_SYMLINK, 0o777, 0, 0, 5, target="/etc/secret")
    assert parse_lines([entry("quarantine", "/q/3", link).to_line()]).entries[0].meta == link


def test_lines_from_before_metadata_still_parse() -> None:
    legacy = {
        "op": "quarantine",
        "original": "/etc/cni/net.d/00-x.conflist",
        "stored": "/var/lib/cni/cniwarden/quarantine/a.quarantined",
        "sha256": "ab" * 32,
        "time": "2026-01-01T00:00:00Z",
        "network": "net",
    }
    (parsed,) = parse_lines([json.dumps(legacy) + "\n"]).entries
    assert parsed.meta is None and parsed.stored.endswith("a.quarantined")


def test_a_torn_last_line_is_ignored_and_corrupt_lines_are_reported_and_skipped() -> None:
    """Issue 11 item 4: one bad line anywhere no longer makes the whole journal
    unreadable; it is named (line number, why) and every other entry stands."""
    good = entry("quarantine", "/q/1").to_line()
    other = entry("quarantine", "/q/2").to_line()
    read = parse_lines([good, good[:20]])
    assert len(read.entries) == 1 and read.corrupt == []
    read = parse_lines(["{not json}\n", good, '{"op": "quarantine"}\n', other, "[1]\n"])
    assert [e.stored for e in read.entries] == ["/q/1", "/q/2"]
    assert [c.number for c in read.corrupt] == [1, 3, 5]
    assert "missing 'original'" in read.corrupt[1].error
    assert "not a JSON object" in read.corrupt[2].error


@pytest.mark.parametrize(
    "meta",
    [
        {"kind": "fifo", "mode": 1, "uid": 0, "gid": 0, "mtime_ns": 0},
        {"kind": "file", "mode": -1, "uid": 0, "gid": 0, "mtime_ns": 0},
        {"kind": "file", "mode": "644", "uid": 0, "gid": 0, "mtime_ns": 0},
        {"kind": "symlink", "mode": 1, "uid": 0, "gid": 0, "mtime_ns": 0},
        {"kind": "file", "mode": 1, "uid": 0, "gid": 0, "mtime_ns": 0, "target": "/x"},
    ],
)
def test_bad_metadata_is_a_corrupt_line(meta: dict[str, object]) -> None:
    raw = json.loads(entry("quarantine", "/q/1").to_line())
    raw["meta"] = meta
    read = parse_lines([json.dumps(raw) + "\n", entry("quarantine", "/q/2").to_line()])
    assert [c.number for c in read.corrupt] == [1]
    assert [e.stored for e in read.entries] == ["/q/2"]


def test_an_intent_without_its_record_is_an_interrupted_move() -> None:
    intent = entry("moving", "/q/1", None)
    assert interrupted_moves([intent]) == [intent]
    assert interrupted_moves([intent, entry("quarantine", "/q/1")]) == []
    assert interrupted_moves([intent, entry("discard", "/q/1")]) == []
    assert outstanding([intent]) == []
