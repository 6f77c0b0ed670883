"""Packet sockets of announcements are closed by a background thread (closing one waits for
an RCU grace period), and that thread must not pin the sandbox it was started from."""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable

import pytest

from node_plugin.bridge import announce
from node_plugin.kernel import netns
from tests.integration.plugin.kernel import Netns


def _packet_sockets_of_this_process() -> int:
    fd_dir = "/proc/self/fd"
    inodes = set()
    for name in os.listdir(fd_dir):
        try:
            inodes.add(os.readlink(os.path.join(fd_dir, name)))
        except OSError:
            continue
    with open("/proc/net/packet") as table:
        rows = table.read().splitlines()[1:]
    # The last column is the socket's inode; /proc/net/packet lists the calling thread's
    # namespace only, which is why the caller reads it from the sandbox.
    return sum(1 for row in rows if f"socket:[{row.split()[-1]}]" in inodes)


def test_closer_thread_leaves_the_sandbox_and_closes_the_socket(
    sandbox: Callable[[], Netns], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = sandbox()
    ns.exec("ip", "link", "set", "lo", "up")
    # A fresh closer, started from inside the sandbox like a server worker's first ADD.
    closer = announce.SocketCloser()
    monkeypatch.setattr(announce, "_closer", closer)
    seen: dict[str, object] = {}

    def in_sandbox() -> None:
        with netns.entered(ns.path):
            announce.announce("lo", "00:00:00:00:00:00", [ipaddress.IPv4Address("127.0.0.1")])
            seen["sandbox"] = netns.identity()
            pause = threading.Event()
            for _ in range(200):
                if _packet_sockets_of_this_process() == 0:
                    break
                pause.wait(0.05)
            seen["open packet sockets"] = _packet_sockets_of_this_process()

    worker = threading.Thread(target=in_sandbox)
    worker.start()
    worker.join(timeout=60)
    assert closer.thread is not None and closer.thread.native_id is not None
    closer_ns = os.stat(f"/proc/self/task/{closer.thread.native_id}/ns/net")
    process_ns = os.stat("/proc/self/ns/net")
    assert (closer_ns.st_dev, closer_ns.st_ino) == (process_ns.st_dev, process_ns.st_ino)
    assert (closer_ns.st_dev, closer_ns.st_ino) != seen["sandbox"]
    assert seen["open packet sockets"] == 0
