"""Files that survive a crash whole: every byte written, then made durable.

`os.write` may write less than it was given (a nearly full disk, a signal), and a
rename or unlink is only durable once its directory is fsynced. The lease store, the
server's DEL queue and the agent's atomic writes all need exactly these two steps.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`, looping on short writes; OSError(ENOSPC) when a
    write makes no progress at all."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    """Make the creations, renames and removals in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
