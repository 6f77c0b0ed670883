"""Timestamps in the format the Kubernetes API uses (RFC 3339, UTC, seconds)."""

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
