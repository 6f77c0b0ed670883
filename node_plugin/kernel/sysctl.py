"""/proc/sys reads and writes; net.* keys resolve in the calling thread's network namespace."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key


def read(key: str) -> str | None:
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except OSError:
        return None


def write(key: str, value: str) -> None:
    """Write unless already set (writes to /proc/sys are not free)."""
    if read(key) == value:
        return
    with open(_path(key), "w") as f:
        f.write(value)


def write_quietly(key: str, value: str) -> None:
    """Best effort, as the reference does for per-interface knobs (e.g. accept_ra)."""
    try:
        write(key, value)
    except OSError as exc:
        log.debug("sysctl %s=%s: %s", key, value, exc)
