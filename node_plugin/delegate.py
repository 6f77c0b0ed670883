"""Exec a delegated IPAM plugin through CNI_PATH, exactly as the spec's delegation says.

The delegate gets the same stdin (the whole network config) and the same CNI_*
environment, with CNI_COMMAND set to the verb being delegated. Its error code is
passed through; output that is not CNI is reported as code 131.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from typing import Any

from node_plugin.errors import (
    DELEGATE_FAILED,
    DELEGATE_NOT_FOUND,
    INVALID_CONFIG,
    CniError,
)
from node_plugin.result import Result
from node_plugin.skel import CmdArgs
from node_plugin.versions import SUPPORTED

log = logging.getLogger(__name__)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
    proc = subprocess.run([exe], input=args.stdin, capture_output=True, env=env, check=False)
    if proc.stderr:
        log.info("%s %s stderr: %s", plugin_type, command, proc.stderr.decode(errors="replace"))
    if proc.returncode == 0:
        return proc.stdout
    err = _parse_error(proc.stdout)
    if err is None:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-500:]
        raise CniError(
            DELEGATE_FAILED,
            f"IPAM plugin {plugin_type} {command} exited {proc.returncode} without a CNI error",
            tail,
        )
    code, msg, details = err
    raise CniError(code, f"IPAM plugin {plugin_type} {command}: {msg}", details)


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
