"""The server's socket on the node: one server per path, never with loose permissions.

A lock makes "one server per socket" a fact instead of a race on the path. It is an
abstract Unix socket named after the socket's directory (device and inode) and file name,
not a lock file: the kernel frees it when the process dies, so a server killed with
SIGKILL (a pod past its grace period, the OOM killer) leaves nothing on the node for an
uninstall to find. The socket itself is bound under a temp name, restricted to 0600 and
renamed into place, so it never exists with looser permissions and a stale one is
replaced atomically.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path


class ServerError(Exception):
    """The server cannot start (another one runs, the socket path is unusable...)."""


class Listener:
    """The bound, listening socket, its lock, and the identity of the file we created."""

    def __init__(self, path: Path, backlog: int = 128) -> None:
        self.path = path
        self._lock: socket.socket | None = self._take_lock(path)
        try:
            self.socket, self._inode = self._bind(path, backlog)
        except BaseException:
            self._release_lock()
            raise

    @staticmethod
    def _take_lock(path: Path) -> socket.socket:
        parent = path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)
            os.chmod(parent, 0o700)
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            lock.bind(lock_name(path))
        except OSError as e:
            lock.close()
            if e.errno == errno.EADDRINUSE:
                raise ServerError(f"another cni-server is serving {path}") from None
            raise ServerError(f"cannot take the lock for {path}: {e}") from e
        return lock

    @staticmethod
    def _bind(path: Path, backlog: int) -> tuple[socket.socket, tuple[int, int]]:
        if os.path.lexists(path) and not path.is_socket():
            raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, path)
            listener.listen(backlog)
        except OSError as e:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise ServerError(f"cannot listen on {path}: {e}") from e
        st = path.stat()
        return listener, (st.st_dev, st.st_ino)

    def stop_accepting(self) -> None:
        """Wakes every thread blocked in accept() (EINVAL), then no new connection."""
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)

    def remove_file(self) -> None:
        """Removes the socket file if it is still ours (shims then queue DELs at once)."""
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()

    def close(self) -> None:
        self.socket.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def lock_name(path: Path) -> bytes:
    """The abstract socket name that stands for "a server serves `path`": the directory's
    identity rather than its spelling, so two spellings of one path share the lock."""
    st = path.parent.stat()
    return f"\0cniwarden-cni-server:{st.st_dev}:{st.st_ino}:{path.name}".encode()
