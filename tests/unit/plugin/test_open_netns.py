"""kernel.netns.open_netns checks what a path is before it opens it for reading."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from node_plugin.cni.errors import NETNS_UNAVAILABLE, CniError
from node_plugin.kernel import netns


def _open_in_thread(path: str) -> tuple[threading.Thread, list[BaseException | int]]:
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(netns.open_netns(path))
        except BaseException as error:  # the test inspects what happened
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "netns"
    os.mkfifo(fifo)
    thread, outcome = _open_in_thread(str(fifo))
    thread.join(timeout=10)
    if thread.is_alive():  # free the blocked open(2) so the test process can exit
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
        pytest.fail("open_netns blocked on a FIFO")
    [error] = outcome
    assert isinstance(error, CniError) and error.code == NETNS_UNAVAILABLE
    assert "not a network namespace" in error.msg


def test_a_regular_file_and_a_missing_path_are_121(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    for path in (tmp_path / "file", tmp_path / "missing"):
        with pytest.raises(CniError) as raised:
            netns.open_netns(str(path))
        assert raised.value.code == NETNS_UNAVAILABLE


def test_the_callers_namespace_opens_as_a_namespace() -> None:
    fd = netns.open_netns("/proc/self/ns/net")
    try:
        assert netns.is_netns(fd)
        assert netns.identity(fd) == netns.identity()
    finally:
        os.close(fd)
