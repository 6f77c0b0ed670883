"""The server's socket on the node: one server per path, never with loose permissions.

A lock file next to the socket makes "one server per socket" a fact instead of a race on
the path; the socket is bound under a temp name, restricted to 0600 and renamed into
place, so it never exists with looser permissions and a stale one is replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class ServerError(Exception):
    """The server cannot start (another one runs, the socket path is unusable...)."""


class Listener:
    """The bound, listening socket, its lock, and the identity of the file we created."""

    def __init__(self, path: Path, backlog: int = 128) -> None:
        self.path = path
        self._lock_fd: int | None = self._lock(path)
        try:
            self.socket, self._inode = self._bind(path, backlog)
        except BaseException:
            self._release_lock()
            raise

    @staticmethod
    def _lock(path: Path) -> int:
        parent = path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)
            os.chmod(parent, 0o700)
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise ServerError(f"another cni-server is serving {path}") from None
        return lock_fd

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
        if self._lock_fd is None:
            return
        # Removed while still held, so a stopped server leaves no file on the node (a
        # server starting meanwhile fails on the held lock and is restarted).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.path}.lock")
        os.close(self._lock_fd)
        self._lock_fd = None
