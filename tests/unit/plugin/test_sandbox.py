"""node_plugin.cni.sandbox: what CNI_NETNS names, without ever blocking on it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from node_plugin.cni import sandbox


def inspect_within(path: str, seconds: float = 5) -> sandbox.Sandbox:
    """inspect() on a thread: a blocking open would leave the test hanging otherwise."""
    found: list[sandbox.Sandbox] = []
    worker = threading.Thread(target=lambda: found.append(sandbox.inspect(path)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert found, f"inspect({path!r}) blocked"
    return found[0]


def test_a_fifo_is_not_a_namespace_and_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        found = inspect_within(str(fifo))
    finally:
        os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))  # frees a blocked reader, if any
    assert found.kind is sandbox.Kind.NOT_A_NAMESPACE
    assert found.detail.startswith("unknown FS magic on netns")


def test_files_and_directories_are_not_namespaces(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for path in (tmp_path / "file", tmp_path):
        assert inspect_within(str(path)).kind is sandbox.Kind.NOT_A_NAMESPACE


def test_a_missing_path_is_missing(tmp_path: Path) -> None:
    assert inspect_within(str(tmp_path / "gone")).kind is sandbox.Kind.MISSING


def test_a_namespace_file_is_a_namespace() -> None:
    # Another type of namespace: the plugin's open checks the type (NS_GET_NSTYPE).
    assert inspect_within("/proc/self/ns/mnt").kind is sandbox.Kind.NAMESPACE


def test_the_callers_own_network_namespace_is_recognised() -> None:
    for path in ("/proc/self/ns/net", "/proc/thread-self/ns/net"):
        found = inspect_within(path)
        assert found.kind is sandbox.Kind.CALLERS_OWN, path
