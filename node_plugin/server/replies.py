"""The answers the server itself makes, in the plugins' own format.

The shim prints a reply as if a plugin had run, so an answer the server makes without
running a plugin (protocol error, timeout, refused peer, crash) must look exactly like a
plugin's CNI error: a JSON error object on stdout, exit code 1, in the request's version.
"""

from __future__ import annotations

import json

from node_plugin.cni import errors
from node_plugin.server.protocol import Reply, Request

# CNI error codes the server itself produces.
CNI_IO_FAILURE = errors.IO_FAILURE
CNI_TRY_AGAIN = errors.TRY_AGAIN_LATER
CNI_DELEGATE_TIMEOUT = errors.DELEGATE_TIMEOUT
CNI_INTERNAL = errors.INTERNAL

DEFAULT_VERSION = "1.1.0"


def config_version(stdin: bytes) -> str:
    """The request's `cniVersion`, so a runtime parses our error in the version it sent."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:  # not JSON, not an object, nested too deeply (RecursionError)...
        return DEFAULT_VERSION
    return version if isinstance(version, str) and version else DEFAULT_VERSION


def error_reply(request: Request | None, code: int, msg: str, details: str = "") -> Reply:
    """A CNI error object on stdout and exit 1, as the plugins answer."""
    version = config_version(request.stdin) if request else DEFAULT_VERSION
    body: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        body["details"] = details
    return Reply(exit_code=1, stdout=json.dumps(body).encode() + b"\n")


def error_code(reply: Reply) -> int | None:
    """None for success, else the CNI error code (the exit code if stdout has none)."""
    if reply.exit_code == 0:
        return None
    try:
        code = json.loads(reply.stdout).get("code")
    except Exception:  # whatever a handler printed, it must not end the replay thread
        code = None
    return code if isinstance(code, int) else reply.exit_code


def who(request: Request) -> str:
    """`<container id prefix>/<ifname>` for log lines ("-" for requests of no attachment)."""
    key = request.attachment
    return f"{key[0][:12]}/{key[1]}" if key else "-"
