"""A delegated IPAM plugin that hangs, for the tests of delegate timeouts.

It records its pid and the pid of a child it starts (in its own process group, as a
plugin's helpers would be) and waits for that child; verbs it does not hang on answer
success at once. Both carry a marker in their environment (the pids file's path), so
`running` and `kill_all` only ever see and signal these processes, never a process that
reused a recorded pid after they died (other runs share the machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

MARK = "CNIWARDEN_TEST_HANG_MARK"


def install(directory: Path, name: str, pids: Path, hang_on: tuple[str, ...] = ("ADD",)) -> Path:
    """Writes the plugin as `directory/name`; it appends the pids it starts to `pids`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    verbs = "|".join(hang_on)
    script.write_text(
        "#!/bin/sh\n"
        f'[ -n "${MARK}" ] || exec env {MARK}="{pids}" /bin/sh "$0" "$@"\n'
        'case "$CNI_COMMAND" in\n'
        f"{verbs})\n"
        f'    echo $$ >> "{pids}"\n'
        "    sleep 600 &\n"
        f'    echo $! >> "{pids}"\n'
        "    wait\n"
        "    ;;\n"
        "esac\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def ours(pid: int, pids: Path) -> bool:
    """The process carries this plugin's marker (a reused pid does not)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return f"{MARK}={pids}".encode() in environ


def started(pids: Path) -> list[int]:
    return [int(line) for line in pids.read_text().split()] if pids.exists() else []


def running(pid: int, pids: Path) -> bool:
    """Alive, ours, and not a zombie waiting for its parent."""
    if not ours(pid, pids):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_all(pids: Path) -> None:
    """Ends whatever the plugin started (a test that failed must not leave them behind)."""
    for pid in started(pids):
        if not ours(pid, pids):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
