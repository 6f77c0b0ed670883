"""host-local's on-disk lease store, in the reference layout so nodes can move either way.

`<dataDir>/<network>/<ip>` holds `containerID\\r\\nifname`; `last_reserved_ip.<set>`
remembers where round-robin stopped; `lock` is taken with flock(2) exactly like the
reference, so our plugin and the reference never allocate concurrently. A
per-directory threading lock serializes callers inside one process too (the
resident server runs many requests at once).

Leases are written to a temporary file and hard-linked into place, so a lease
file never exists half-written even if the process is killed mid-ADD.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from node_plugin.cni.errors import IO_FAILURE, CniError
from node_plugin.kernel.durable import write_all

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
TEMP_PREFIX = ".cniwarden-"
LINE_BREAK = "\r\n"

_registry_guard = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


def _thread_lock(path: str) -> threading.Lock:
    with _registry_guard:
        lock = _thread_locks.get(path)
        if lock is None:
            lock = _thread_locks[path] = threading.Lock()
        return lock


@dataclass(frozen=True)
class Lease:
    container_id: str
    ifname: str | None  # None: written by an old reference version (id only)

    def owned_by(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id.strip() and self.ifname == ifname


def _flock_holders(fd: int) -> str:
    """Who holds the flock on `fd`'s file, from /proc/locks (for the error message)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    pids = sorted(
        {
            fields[4]
            for fields in (line.split() for line in lines)
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode
        }
    )
    return f"held by pid {', '.join(pids)}" if pids else ""


def _io_error(action: str, path: Path, exc: OSError) -> CniError:
    return CniError(IO_FAILURE, f"host-local store: cannot {action} {path}: {exc.strerror or exc}")


class Store:
    """One network's directory. Every method except `locked` expects the lock held."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = Path(data_dir) / network

    @contextmanager
    def locked(self, create: bool = True, timeout: float = 5.0) -> Iterator[Store]:
        """Hold the in-process lock, then flock `<dir>/lock`. `create=False` skips a missing dir.

        Both waits end `timeout` seconds after the call, with code 5 naming who holds the
        lock: a holder takes it for milliseconds (ours and the reference's), so a longer
        wait means a stuck process, and a resident server's worker must never wait with it.
        flock is polled non-blocking (first at once: no cost when nobody holds it).
        """
        deadline = time.monotonic() + timeout
        lock_path = self.dir / LOCK_NAME
        thread_lock = _thread_lock(os.path.abspath(self.dir))
        if not thread_lock.acquire(timeout=timeout):
            raise CniError(
                IO_FAILURE,
                f"host-local store: {lock_path} is held by another request of this "
                f"process for more than {timeout:g}s",
            )
        try:
            try:
                if create:
                    self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
                elif not self.dir.is_dir():
                    yield self
                    return
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise _io_error("open", lock_path, exc) from None
            try:
                pause = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise CniError(
                                IO_FAILURE,
                                f"host-local store: {lock_path} is locked by another process "
                                f"for more than {timeout:g}s",
                                _flock_holders(fd),
                            ) from None
                        time.sleep(min(pause, left))
                        pause = min(pause * 2, 0.05)
                yield self
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            thread_lock.release()

    def exists(self) -> bool:
        return self.dir.is_dir()

    def leases(self) -> dict[IPAddress, Lease]:
        found = read_lease_dir(self.dir)
        if found.unreadable:
            path, exc = found.unreadable[0]
            raise _io_error("list" if path == self.dir else "read", path, exc)
        return found.leases

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, set_index: int) -> bool:
        """Create the lease file for `ip`; False when someone already holds it."""
        final = self.dir / str(ip)
        content = (container_id.strip() + LINE_BREAK + ifname).encode()
        tmp = self._write_temp(content)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _io_error("create", final, exc) from None
        finally:
            _unlink_quietly(tmp)
        self._write_last_reserved(set_index, ip)
        return True

    def last_reserved(self, set_index: int) -> IPAddress | None:
        path = self.dir / f"{LAST_RESERVED_PREFIX}{set_index}"
        try:
            return ipaddress.ip_address(path.read_text().strip())
        except (OSError, ValueError):
            return None  # missing or garbled: round-robin restarts, as in the reference

    def release(self, ip: IPAddress) -> None:
        _unlink_quietly(self.dir / str(ip))

    def release_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release what (containerID, ifname) holds; old id-only leases if there is none."""
        leases = self.leases()
        mine = [ip for ip, lease in leases.items() if lease.owned_by(container_id, ifname)]
        if not mine:
            cid = container_id.strip()
            mine = [ip for ip, ls in leases.items() if ls.ifname is None and ls.container_id == cid]
        for ip in mine:
            self.release(ip)
        return mine

    def remove_temp_files(self) -> int:
        """Drop temporaries left by a killed writer (only safe when no ADD runs: GC)."""
        removed = 0
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return 0
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX):
                _unlink_quietly(Path(entry.path))
                removed += 1
        return removed

    def _write_temp(self, content: bytes) -> Path:
        tmp = self.dir / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, content)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _io_error("write", tmp, exc) from None
        return tmp

    def _write_last_reserved(self, set_index: int, ip: IPAddress) -> None:
        final = self.dir / f"{LAST_RESERVED_PREFIX}{set_index}"
        tmp = self._write_temp(str(ip).encode())
        try:
            os.replace(tmp, final)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise _io_error("write", final, exc) from None


@dataclass
class LeaseDir:
    """One network's leases as read without the lock, and what could not be read."""

    leases: dict[IPAddress, Lease] = field(default_factory=dict)
    unreadable: list[tuple[Path, OSError]] = field(default_factory=list)


def read_lease_dir(directory: Path) -> LeaseDir:
    """The leases in `<dataDir>/<network>`: files named by an address (the layout
    host-local reads too; `lock`, `last_reserved_ip.*` and temporaries are not
    leases). A file removed while we list is skipped. No lock is taken: callers
    that allocate hold `Store.locked`; readers that only count (the node agent)
    take a snapshot and read again on the next change."""
    found = LeaseDir()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    except OSError as exc:
        found.unreadable.append((directory, exc))
        return found
    for entry in entries:
        try:
            ip = ipaddress.ip_address(entry.name)
        except ValueError:
            continue
        try:
            with open(entry.path, "rb") as f:
                content = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.unreadable.append((Path(entry.path), exc))
            continue
        found.leases[ip] = parse_lease(content)
    return found


def read_data_dir(data_dir: Path) -> dict[str, LeaseDir]:
    """Every network's leases under a host-local `dataDir`, by network name."""
    try:
        networks = sorted(
            (entry for entry in os.scandir(data_dir) if entry.is_dir()), key=lambda e: e.name
        )
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {entry.name: read_lease_dir(Path(entry.path)) for entry in networks}


def parse_lease(content: str) -> Lease:
    """`id\\r\\nifname` (current) or `id` (reference before v0.8); whitespace tolerated."""
    text = content.strip()
    if LINE_BREAK in text:
        cid, _, ifname = text.partition(LINE_BREAK)
        return Lease(cid.strip(), ifname.strip())
    return Lease(text, None)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise _io_error("remove", path, exc) from None
