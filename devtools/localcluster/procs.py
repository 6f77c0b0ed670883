"""Start daemons detached, wait on real readiness, stop them by pid.

There is no systemd here: every component is a background process whose pid
(and start time, against pid reuse) goes into the cluster state. Readiness
failures carry the tail of the failing component's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .state import ProcessRecord

LOG_TAIL_LINES = 40
# Children started by this process, kept so their exit status is ours to read
# (and not reaped by subprocess' own cleanup), and how they ended.
_children: dict[int, subprocess.Popen[bytes]] = {}
_exit_statuses: dict[int, str] = {}


class ComponentError(RuntimeError):
    """A component did not start or become ready; the message holds its log tail."""


class CommandError(subprocess.CalledProcessError):
    """A failed short command whose message carries its stderr (and stdout)."""

    def __str__(self) -> str:
        detail = (self.stderr or "").strip() or (self.output or "").strip()
        return f"{' '.join(map(str, self.cmd))} failed with exit code {self.returncode}: {detail}"


def log_tail(path: Path | str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def nsenter(
    argv: Sequence[str], netns: Path | None, mntns: Path | None, utsns: Path | None = None
) -> list[str]:
    """`argv` run inside the given network/mount/UTS namespaces (as is, with none)."""
    flags = [f"--net={netns}"] if netns is not None else []
    flags += [f"--mount={mntns}"] if mntns is not None else []
    flags += [f"--uts={utsns}"] if utsns is not None else []
    return ["nsenter", *flags, "--", *argv] if flags else list(argv)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    return raw[raw.rindex(")") + 2 :].split()


def starttime(pid: int) -> int:
    fields = _stat_fields(pid)
    if fields is None:
        raise ProcessLookupError(pid)
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process (not a later one reusing its pid) runs."""
    child = _children.get(record.pid)
    if child is not None:
        code = child.poll()
        if code is None:
            return True
        del _children[record.pid]
        _exit_statuses[record.pid] = (
            f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        )
        return False
    fields = _stat_fields(record.pid)
    if fields is None or int(fields[19]) != record.starttime:
        return False
    if fields[0] == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, os.WNOHANG)
        return False
    return True


def exit_status(record: ProcessRecord) -> str:
    """How a process we started ended, when we reaped it ourselves."""
    return _exit_statuses.get(record.pid, "exit status unknown (not our child)")


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    netns: Path | None = None,
    mntns: Path | None = None,
    utsns: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    node: str | None = None,
) -> ProcessRecord:
    """Start `argv` in its own session (it outlives the caller), output to `log`.

    With `netns`/`mntns`/`utsns`, the process joins those namespaces through `nsenter`,
    which execs in place (so the pid is the daemon's) and, unlike
    `ip netns exec`, leaves /sys and the cgroup mounts alone.
    """
    argv = nsenter(argv, netns, mntns, utsns)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    _children[proc.pid] = proc
    # Popen returns after exec; /proc/PID/stat is there until the process is reaped.
    try:
        started = starttime(proc.pid)
    except ProcessLookupError:
        started = 0
    return ProcessRecord(name=name, pid=proc.pid, starttime=started, log=str(log), node=node)


def stop(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns once it is gone."""
    if not is_alive(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(record):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(record):
        if time.monotonic() > deadline:
            raise ComponentError(f"{record.name} (pid {record.pid}) survived SIGKILL")
        time.sleep(0.05)


def wait_ready(
    record: ProcessRecord,
    probe: Callable[[], bool],
    *,
    timeout: float,
    what: str | None = None,
    interval: float = 0.2,
) -> float:
    """Poll `probe` until it returns True; fail fast if the process dies.

    Returns the seconds waited. The error names the component and holds its log tail.
    """
    started = time.monotonic()
    deadline = started + timeout
    last_error = ""
    while True:
        if not is_alive(record):
            raise ComponentError(
                f"{record.name} exited before it was ready ({what or 'probe'}; "
                f"{exit_status(record)}); "
                f"last log lines of {record.log}:\n{log_tail(record.log)}"
            )
        try:
            if probe():
                return time.monotonic() - started
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise ComponentError(
                f"{record.name} not ready after {timeout:.0f}s ({what or 'probe'}"
                f"{'; last error: ' + last_error if last_error else ''}); "
                f"last log lines of {record.log}:\n{log_tail(record.log)}"
            )
        time.sleep(interval)


def pids_in_namespace(kind: str, ns_file: Path) -> list[int]:
    """Pids whose `kind` namespace ("net", "mnt") is the one bound at `ns_file`."""
    try:
        bound = ns_file.stat()
        nsfs = Path("/proc/self/ns/net").stat().st_dev
    except OSError:
        return []
    if bound.st_dev != nsfs:
        return []  # a plain file: the namespace was never bound there (or is gone)
    target = bound.st_ino
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "ns" / kind).stat().st_ino == target:
                    found.append(int(entry.name))
    return found


def processes_matching(predicate: Callable[[int, str, str], bool]) -> list[int]:
    """Pids whose (pid, cmdline, cgroup file text) satisfy `predicate`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if predicate(pid, cmdline, cgroups):
            found.append(pid)
    return found


def kill_pids(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL every pid and wait until none is left (zombies of ours are reaped)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        still = []
        for pid in remaining:
            fields = _stat_fields(pid)
            if fields is None:
                continue
            if fields[0] == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                continue
            still.append(pid)
        remaining = still
        if remaining:
            time.sleep(0.05)
    if remaining:
        raise ComponentError(f"processes {remaining} survived SIGKILL")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    netns: Path | None = None,
    mntns: Path | None = None,
    utsns: Path | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a short command and capture its output; errors say what failed and why."""
    argv = nsenter(argv, netns, mntns, utsns)
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, input=input, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr)
    return proc
