"""Enter a network namespace on the calling thread only, and always come back.

setns(2) with CLONE_NEWNET moves just the calling OS thread, so the same code runs
in the standalone plugin's main thread and in a resident server's worker threads.
No fork (pyroute2's `IPRoute(netns=...)` forks a helper: 7.8 ms against 2.8 ms).
Netlink sockets opened inside the block stay bound to that namespace.
Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from node_plugin.cni import sandbox
from node_plugin.cni.errors import NETNS_UNAVAILABLE, CniError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3)
THREAD_NETNS = "/proc/thread-self/ns/net"
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsRestoreError(RuntimeError):
    """The thread could not return to its namespace: it must not serve anything else."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def identity(fd: int | None = None) -> tuple[int, int]:
    """(dev, inode) of a namespace fd, or of the calling thread's namespace."""
    st = os.fstat(fd) if fd is not None else os.stat(THREAD_NETNS)
    return st.st_dev, st.st_ino


def open_netns(path: str) -> int:
    """An O_RDONLY fd for a netns path; code 121 when it is missing or not a namespace.

    The path is first opened O_PATH (never blocks, reads nothing) and its filesystem
    checked: an open(2) for reading of a FIFO swapped in at that path would block the
    thread for ever. The readable fd is then reopened through /proc/self/fd from that
    very descriptor, so what is opened is what was checked, whatever the path names now.
    """
    try:
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(
            NETNS_UNAVAILABLE, f"failed to open netns {path!r}: {exc.strerror}"
        ) from None
    try:
        if not sandbox.on_namespace_fs(probe):
            raise CniError(NETNS_UNAVAILABLE, f"{path!r} is not a network namespace")
        fd = os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(
            NETNS_UNAVAILABLE, f"failed to open netns {path!r}: {exc.strerror}"
        ) from None
    finally:
        os.close(probe)
    if not is_netns(fd):
        os.close(fd)
        raise CniError(NETNS_UNAVAILABLE, f"{path!r} is not a network namespace")
    return fd


def is_netns(fd: int) -> bool:
    """Ask the kernel (NS_GET_NSTYPE); a plain file, dir or another namespace type is not one."""
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def join(path: str) -> None:
    """Move the calling thread, for good, into the namespace at `path` (a single-threaded
    process moves as a whole, and what it execs starts there)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


def join_process_netns() -> None:
    """Move the calling thread, for good, to the namespace of the process's main thread
    (`/proc/self` is the thread group leader)."""
    join("/proc/self/ns/net")


@contextmanager
def entered(target: str | int) -> Iterator[int]:
    """Run the block in `target` (a path or an open fd); yields the namespace fd.

    The original namespace is restored even if the block raises; if restoring
    fails the thread is unusable and NetnsRestoreError is raised.
    """
    own_fd = isinstance(target, str)
    fd = open_netns(target) if isinstance(target, str) else target
    try:
        if identity(fd) == identity():
            yield fd
            return
        home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _setns(fd)
            except OSError as exc:
                raise CniError(
                    NETNS_UNAVAILABLE, f"cannot enter netns {target!r}: {exc.strerror}"
                ) from None
            try:
                yield fd
            finally:
                try:
                    _setns(home)
                except OSError as exc:
                    raise NetnsRestoreError(
                        f"cannot return thread to its network namespace: {exc}"
                    ) from exc
        finally:
            os.close(home)
    finally:
        if own_fd:
            os.close(fd)
