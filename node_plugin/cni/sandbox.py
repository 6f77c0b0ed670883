"""What CNI_NETNS names, found out before anything opens it for reading or touches it.

open(2) of a FIFO blocks until a writer shows up, so a CNI_NETNS pointing at one used to
hold the plugin (and a resident server's worker) for ever. The reference plugins ask
statfs(2) first and refuse anything that is neither nsfs nor procfs ("unknown FS
magic"); this does the same on an O_PATH descriptor, which never blocks and reads
nothing. The same descriptor tells whether the path is the caller's own network
namespace: ADD, CHECK or DEL there would create or delete the node's own links.

Standard library only (os, ctypes for fstatfs, which Python does not wrap); it enters no
namespace and reads no file.
"""

from __future__ import annotations

import ctypes
import enum
import os
from dataclasses import dataclass

NSFS_MAGIC = 0x6E736673
PROC_SUPER_MAGIC = 0x9FA0
_NAMESPACE_FILESYSTEMS = frozenset({NSFS_MAGIC, PROC_SUPER_MAGIC})
_CALLER_NETNS = ("/proc/thread-self/ns/net", "/proc/self/ns/net")  # this thread's, the process's


class Kind(enum.Enum):
    MISSING = "missing"
    NOT_A_NAMESPACE = "not a namespace"
    CALLERS_OWN = "the caller's own network namespace"
    NAMESPACE = "a namespace"  # nsfs/procfs, not ours: the plugin checks the type itself


@dataclass(frozen=True)
class Sandbox:
    kind: Kind
    detail: str = ""  # why, for the error message


class _Statfs(ctypes.Structure):
    # struct statfs starts with f_type (__fsword_t, a long) on every Linux ABI; the rest
    # is padding big enough for any of them (120 bytes on x86_64).
    _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 248))


_libc = ctypes.CDLL(None, use_errno=True)


def on_namespace_fs(fd: int) -> bool:
    """Whether `fd` (an O_PATH descriptor is enough) lies on nsfs or procfs."""
    return _fs_magic(fd) in _NAMESPACE_FILESYSTEMS


def _fs_magic(fd: int) -> int:
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(buf.f_type) & 0xFFFFFFFF


def inspect(path: str) -> Sandbox:
    """What `path` is, without blocking and without opening it for reading."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return Sandbox(Kind.MISSING, "no such file or directory")
    except OSError as exc:
        return Sandbox(Kind.NOT_A_NAMESPACE, exc.strerror or str(exc))
    try:
        magic = _fs_magic(fd)
        if magic not in _NAMESPACE_FILESYSTEMS:
            return Sandbox(Kind.NOT_A_NAMESPACE, f"unknown FS magic on netns {path!r}: {magic:x}")
        st = os.fstat(fd)
    finally:
        os.close(fd)
    ours = {(s.st_dev, s.st_ino) for s in map(os.stat, _CALLER_NETNS)}
    if (st.st_dev, st.st_ino) in ours:
        return Sandbox(Kind.CALLERS_OWN, "it is the network namespace the plugin runs in")
    return Sandbox(Kind.NAMESPACE)
