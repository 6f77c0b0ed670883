"""kernel.durable: a short write is continued, never silently truncated."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from node_plugin.kernel import durable


def test_short_writes_are_continued_until_every_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls: list[int] = []

    def at_most_three_bytes(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", at_most_three_bytes)
    target = tmp_path / "f"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        durable.write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    monkeypatch.undo()
    assert target.read_bytes() == b"0123456789"
    assert calls == [10, 7, 4, 1]


def test_a_write_that_makes_no_progress_is_enospc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "write", lambda fd, data: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as raised:
            durable.write_all(fd, b"x")
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOSPC


def test_fsync_dir_accepts_a_directory_and_refuses_a_file(tmp_path: Path) -> None:
    durable.fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(tmp_path / "f")
