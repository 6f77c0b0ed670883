"""Atomic file replacement that no CNI reader can observe half-done.

The temp file's name starts with a dot and ends in `.tmp`, so neither the
runtimes (`.conf`/`.conflist`/`.json`) nor a bin-dir lookup by type pick it up;
it is fsynced, renamed over the target, and the directory is fsynced so the
rename survives a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

from node_plugin.kernel.durable import fsync_dir

__all__ = ["atomic_write", "fsync_dir", "remove", "sha256_bytes", "sha256_file"]

_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_name_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def sweep_temp_files(directory: Path) -> list[str]:
    """Remove temp files a killed writer of ours left (`temp_name_for` names; regular
    files only). Only safe when no write of ours runs: the agent calls it once, at
    the start of its first pass. No runtime ever read them (see above)."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for name in names:
        path = directory / name
        if not _TEMP_NAME.fullmatch(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(path.lstat().st_mode):
                path.unlink()
                removed.append(str(path))
    return removed


def atomic_write(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `target` so readers see the old or the new bytes, nothing else."""
    temp = temp_name_for(target)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except OSError as error:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if error.filename is None:  # a failed write names no file; say which
            raise OSError(error.errno, error.strerror, str(target)) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    fsync_dir(target.parent)


def remove(target: Path) -> bool:
    """Remove a file and make the removal durable; False when it was not there."""
    try:
        target.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(target.parent)
    return True
