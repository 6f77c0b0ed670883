"""Timestamps in the format the Kubernetes API uses (RFC 3339, UTC, seconds)."""

import re
from datetime import UTC, datetime, timedelta, timezone

# RFC 3339 `date-time` (what the CRD's `format: date-time` admits): a fraction of
# any length, `Z` or a numeric offset, `T`/`t` or a space between date and time.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: object) -> float | None:
    """Seconds since the epoch, or None for anything that is not an RFC 3339 date-time
    (a missing value, another format, an impossible date, no offset)."""
    if not isinstance(value, str):
        return None
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, offset_h, offset_m = match.groups()[6:]
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    offset = timedelta(0)
    if not zulu:
        offset = timedelta(hours=int(offset_h), minutes=int(offset_m))
        offset = -offset if sign == "-" else offset
    try:
        # A leap second (:60) is the last instant of its minute.
        stamp = datetime(year, month, day, hour, minute, min(second, 59), micro, timezone(offset))
    except ValueError:
        return None
    return stamp.timestamp()
