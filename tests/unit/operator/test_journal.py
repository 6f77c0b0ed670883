"""The quarantine journal format."""

import pytest
from cni_operator.journal import JournalEntry, JournalError, outstanding, parse_lines


def entry(op: str, stored: str) -> JournalEntry:
    return JournalEntry(op, "/etc/cni/net.d/00-x.conflist", stored, "ab" * 32, "t", "net")


def test_round_trip_and_outstanding() -> None:
    lines = [
        entry("quarantine", "/q/1").to_line(),
        entry("quarantine", "/q/2").to_line(),
        entry("restore", "/q/1").to_line(),
    ]
    parsed = parse_lines(lines)
    assert parsed[0] == entry("quarantine", "/q/1")
    assert [e.stored for e in outstanding(parsed)] == ["/q/2"]


def test_torn_last_line_is_ignored_but_corruption_elsewhere_is_an_error() -> None:
    good = entry("quarantine", "/q/1").to_line()
    assert len(parse_lines([good, good[:20]])) == 1
    with pytest.raises(JournalError, match="line 1"):
        parse_lines(["{not json}\n", good])
