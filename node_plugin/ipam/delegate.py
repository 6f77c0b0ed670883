"""Exec a delegated IPAM plugin through CNI_PATH, exactly as the spec's delegation says.

The delegate gets the same stdin (the whole network config) and the same CNI_*
environment, with CNI_COMMAND set to the verb being delegated. Its error code is
passed through; output that is not CNI is reported as code 131.

A delegate that does not answer in time (a dhcp daemon that never replies, a plugin
stuck on a lock) is killed with its whole process group and reported as code 132,
naming it: in the resident server early enough to answer before the request's deadline
(a hung delegate would otherwise hold its attachment, and the server's workers, for
ever), standalone after CNIWARDEN_DELEGATE_TIMEOUT seconds (60 by default).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from node_plugin.cni.errors import (
    DELEGATE_FAILED,
    DELEGATE_NOT_FOUND,
    DELEGATE_TIMEOUT,
    INVALID_CONFIG,
    INVALID_ENV,
    CniError,
)
from node_plugin.cni.result import Result
from node_plugin.cni.skel import CmdArgs
from node_plugin.cni.versions import SUPPORTED

log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT_ENV = "CNIWARDEN_DELEGATE_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds, when the caller gave no deadline (standalone plugin)
MIN_TIMEOUT = 1.0  # even a request already past its deadline gives its delegate this
# Before a deadline, time kept back to undo the ADD and answer: a fifth of what is
# left, at most this many seconds.
MAX_RESERVE = 2.0
DRAIN_TIMEOUT = 2.0  # for the output of a killed delegate (a child that escaped its group)


def timeout(env: Mapping[str, str], deadline: float | None, now: float) -> float:
    """Seconds the delegate may run: CNIWARDEN_DELEGATE_TIMEOUT (or the default), cut
    so that the caller's answer still makes its `deadline` (monotonic)."""
    limit = DEFAULT_TIMEOUT
    raw = env.get(TIMEOUT_ENV, "")
    if raw:
        try:
            limit = float(raw)
        except ValueError:
            limit = -1.0
        if not limit > 0:
            raise CniError(
                INVALID_ENV, f"{TIMEOUT_ENV}: {raw!r} is not a positive number of seconds"
            )
    if deadline is not None:
        left = deadline - now
        limit = min(limit, max(MIN_TIMEOUT, left - min(MAX_RESERVE, left / 5)))
    return limit


def find(plugin_type: str, args: CmdArgs) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CniError(INVALID_CONFIG, f"invalid network config: ipam.type: {plugin_type!r}")
    dirs = args.require_path()
    for d in dirs:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(DELEGATE_NOT_FOUND, f"failed to find plugin {plugin_type!r} in path {dirs}")


def invoke(args: CmdArgs, plugin_type: str, command: str) -> bytes:
    """Run the delegate; its stdout on success, its CNI error as CniError on failure."""
    exe = find(plugin_type, args)
    env = dict(args.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": args.container_id,
            "CNI_NETNS": args.netns,
            "CNI_IFNAME": args.ifname,
            "CNI_ARGS": args.args,
            "CNI_PATH": args.path,
        }
    )
    limit = timeout(args.env, args.deadline, time.monotonic())
    returncode, stdout, stderr = _run(exe, args.stdin, env, limit, f"{plugin_type} {command}")
    if stderr:
        log.info("%s %s stderr: %s", plugin_type, command, stderr.decode(errors="replace"))
    if returncode is None:
        raise CniError(
            DELEGATE_TIMEOUT,
            f"IPAM plugin {plugin_type} {command} did not answer within {limit:.1f}s: "
            f"killed it ({exe}) with its process group",
            _tail(stderr or stdout),
        )
    if returncode == 0:
        return stdout
    err = _parse_error(stdout)
    if err is None:
        raise CniError(
            DELEGATE_FAILED,
            f"IPAM plugin {plugin_type} {command} exited {returncode} without a CNI error",
            _tail(stderr or stdout),
        )
    code, msg, details = err
    raise CniError(code, f"IPAM plugin {plugin_type} {command}: {msg}", details)


def _run(
    exe: str, stdin: bytes, env: dict[str, str], limit: float, what: str
) -> tuple[int | None, bytes, bytes]:
    """(exit code, stdout, stderr); exit code None when it ran out of time and was killed.

    The delegate leads a process group of its own, so whatever it started dies with it
    and cannot keep its pipes (and us) open."""
    proc = subprocess.Popen(
        [exe],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=limit)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        log.warning("IPAM plugin %s did not answer within %.1fs: killing it", what, limit)
        _kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=DRAIN_TIMEOUT)
        except subprocess.TimeoutExpired:  # a descendant left the group and holds a pipe
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            stdout = stderr = b""
        return None, stdout, stderr
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(output: bytes) -> str:
    return output.decode(errors="replace").strip()[-500:]


def add(args: CmdArgs, plugin_type: str) -> Result:
    out = invoke(args, plugin_type, "ADD")
    try:
        data = json.loads(out)
    except ValueError:
        raise CniError(
            DELEGATE_FAILED, f"IPAM plugin {plugin_type} printed a result that is not JSON"
        ) from None
    version = data.get("cniVersion") if isinstance(data, dict) else None
    if not isinstance(version, str) or version not in SUPPORTED:
        raise CniError(
            DELEGATE_FAILED,
            f"IPAM plugin {plugin_type} answered with unsupported cniVersion {version!r}",
        )
    return Result.from_json(data, version, where=f"{plugin_type} result")


def _parse_error(stdout: bytes) -> tuple[int, str, str] | None:
    try:
        data: Any = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("code"), int):
        return None
    return data["code"], str(data.get("msg", "")), str(data.get("details", ""))
