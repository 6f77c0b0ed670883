"""Runs a request in the caller's network namespace, on the current thread only.

An exec'd plugin does its host-side work (bridge, host veth, masquerade rules) in the
runtime's network namespace. The shim sends that namespace along with the request, and
the worker thread enters it for the request and returns to its own afterwards. In
production the server shares the node's namespace and nothing changes hands; tests run
plugins in private "host" namespaces and get the same semantics as with exec.

setns(2) moves only the calling thread (Python threads are OS threads); Python 3.11 has
no os.setns, hence ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
_THREAD_NETNS = "/proc/thread-self/ns/net"

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    pass


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def entered(netns_fd: int | None) -> Iterator[None]:
    """Inside the block the calling thread is in `netns_fd`'s namespace (None: unchanged)."""
    if netns_fd is None:
        yield
        return
    try:
        target = _identity(os.fstat(netns_fd))
    except OSError as e:
        raise NetnsError(f"caller's network namespace is unusable: {e}") from e
    if target == _identity(os.stat(_THREAD_NETNS)):
        yield
        return
    home = os.open(_THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(netns_fd)
        except OSError as e:
            raise NetnsError(f"cannot enter the caller's network namespace: {e}") from e
        try:
            yield
        finally:
            # A worker left in a foreign namespace would corrupt every later request.
            try:
                _setns(home)
            except OSError:
                os.write(2, b"cni-server: cannot return a worker to its netns; exiting\n")
                os._exit(70)
    finally:
        os.close(home)
