"""The CNI protocol around a plugin: environment, stdin, versions, errors, dispatch.

Pure (json, re, importlib): it validates what the runtime sent, picks the result
version, imports the one plugin module the request names and turns its return
value or `CniError` into the bytes and exit code the runtime expects.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from node_plugin.cni import versions
from node_plugin.cni.errors import (
    DECODE_FAILURE,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENV,
    NETNS_UNAVAILABLE,
    CniError,
)
from node_plugin.cni.request import BRIDGE, HOST_LOCAL, CniRequest, CniResponse, LinkReaper

if TYPE_CHECKING:  # VERSION and bad-input answers need no result model
    from node_plugin.cni.result import Result

log = logging.getLogger(__name__)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Which variables each command needs. CNI_PATH is needed for GC/STATUS only when a
# delegate must be found; the plugin asks for it then (see CmdArgs.require_path).
REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
# Matched with fullmatch: `$` would also match before a trailing newline ("pod1\n").
_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_MODULES = {BRIDGE: "node_plugin.bridge.plugin", HOST_LOCAL: "node_plugin.ipam.hostlocal"}
# Plugins that work inside CNI_NETNS (host-local only records it).
USES_SANDBOX = frozenset({BRIDGE})
ABOUT = "CNI {plugin} plugin (cniwarden)\nCNI protocol versions supported: {versions}\n"


@dataclass(frozen=True)
class CmdArgs:
    """Everything one invocation carries, validated."""

    plugin: str
    command: str
    container_id: str
    netns: str
    ifname: str
    args: str  # CNI_ARGS, raw
    path: str  # CNI_PATH, raw
    stdin: bytes
    config: dict[str, Any]
    version: str
    env: Mapping[str, str]
    reaper: LinkReaper | None = None  # see CniRequest.reaper
    deadline: float | None = None  # see CniRequest.deadline

    def require_path(self) -> list[str]:
        """CNI_PATH as a list of directories; code 4 if a delegate is needed and it is unset."""
        dirs = [d for d in self.path.split(":") if d]
        if not dirs:
            raise CniError(INVALID_ENV, "required env variables [CNI_PATH] missing")
        return dirs

    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC's keep-list: `cni.dev/valid-attachments` (libcni) or `cni.dev/attachments` (spec)."""
        keep: set[tuple[str, str]] = set()
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            raw = self.config.get(key)
            if raw is None:
                continue
            if not isinstance(raw, list):
                raise CniError(INVALID_CONFIG, f"invalid network config: {key}: must be a list")
            for n, item in enumerate(raw):
                if not isinstance(item, dict):
                    raise CniError(
                        INVALID_CONFIG, f"invalid network config: {key}[{n}]: must be an object"
                    )
                cid, ifname = item.get("containerID"), item.get("ifname")
                if not isinstance(cid, str) or not isinstance(ifname, str):
                    raise CniError(
                        INVALID_CONFIG,
                        f"invalid network config: {key}[{n}]: needs string containerID and ifname",
                    )
                keep.add((cid, ifname))
        return keep


class Plugin(Protocol):
    def add(self, args: CmdArgs) -> Result: ...
    def delete(self, args: CmdArgs) -> None: ...
    def check(self, args: CmdArgs) -> None: ...
    def gc(self, args: CmdArgs) -> None: ...
    def status(self, args: CmdArgs) -> None: ...


def dispatch(request: CniRequest) -> CniResponse:
    reported_version = versions.CURRENT
    try:
        if request.plugin not in _MODULES:
            raise CniError(INTERNAL, f"unknown plugin {request.plugin!r}")
        command = request.env.get("CNI_COMMAND", "")
        if command == "":
            sys.stderr.write(
                ABOUT.format(plugin=request.plugin, versions=", ".join(versions.SUPPORTED))
            )
            return CniResponse(0, b"")
        if command not in COMMANDS:
            raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command}")
        if command == "VERSION":
            return _ok(versions.version_info())
        env = _validated_env(command, request.env)
        if request.plugin in USES_SANDBOX and command in ("ADD", "CHECK", "DEL"):
            env["CNI_NETNS"] = _checked_sandbox(command, env["CNI_NETNS"])
        config = decode_config(request.stdin)
        raw_version = config.get("cniVersion")
        if isinstance(raw_version, str) and raw_version in versions.SUPPORTED:
            reported_version = raw_version
        version = versions.effective_version(config)
        reported_version = version
        versions.check_verb_allowed(command, version)
        _validate_name(config)
        args = CmdArgs(
            plugin=request.plugin,
            command=command,
            container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""),
            ifname=env.get("CNI_IFNAME", ""),
            args=env.get("CNI_ARGS", ""),
            path=env.get("CNI_PATH", ""),
            stdin=request.stdin,
            config=config,
            version=version,
            env=request.env,
            reaper=request.reaper,
            deadline=request.deadline,
        )
        plugin = cast(Plugin, importlib.import_module(_MODULES[request.plugin]))
        if command == "ADD":
            return _ok(plugin.add(args).to_json(version))
        {"DEL": plugin.delete, "CHECK": plugin.check, "GC": plugin.gc, "STATUS": plugin.status}[
            command
        ](args)
        return CniResponse(0, b"")
    except CniError as err:
        log.debug("%s failed: %r", request.plugin, err)
        return _error(err, reported_version)
    except RecursionError:
        # json.loads limits nesting only by the interpreter's stack: a config nested
        # thousands deep is a bad config (6), not an internal error.
        msg = "error decoding network config from stdin: nested too deeply"
        return _error(CniError(DECODE_FAILURE, msg), reported_version)
    except Exception as exc:
        log.exception("%s: unexpected failure", request.plugin)
        return _error(CniError(INTERNAL, f"internal error: {exc}"), reported_version)


def decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"error decoding network config from stdin: {exc}") from None
    except RecursionError:
        raise CniError(
            DECODE_FAILURE, "error decoding network config from stdin: nested too deeply"
        ) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config on stdin must be a JSON object")
    return config


def validate_ifname(name: str, variable: str = "CNI_IFNAME") -> None:
    if not name:
        raise CniError(INVALID_ENV, f"{variable}: interface name is empty")
    if len(name.encode()) > 15:
        raise CniError(INVALID_ENV, f"{variable}: interface name {name!r} is longer than 15 bytes")
    if name in (".", ".."):
        raise CniError(INVALID_ENV, f"{variable}: interface name cannot be {name!r}")
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise CniError(
            INVALID_ENV, f"{variable}: interface name {name!r} contains / or : or whitespace"
        )


def _validated_env(command: str, env: Mapping[str, str]) -> dict[str, str]:
    values = {k: env.get(k, "") for k in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")}
    values["CNI_ARGS"] = env.get("CNI_ARGS", "")
    values["CNI_PATH"] = env.get("CNI_PATH", "")
    for key, value in values.items():
        # Bytes that are not UTF-8 reach us as surrogates (os.environ, the server's
        # fsdecode); the CNI spec's values are UTF-8 strings.
        try:
            value.encode()
        except UnicodeEncodeError:
            raise CniError(INVALID_ENV, f"{key}: not valid UTF-8: {value!r}") from None
    missing = [k for k in REQUIRED[command] if not values[k]]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{' '.join(missing)}] missing")
    cid = values["CNI_CONTAINERID"]
    if cid and not _ID.fullmatch(cid):
        raise CniError(
            INVALID_ENV,
            "CNI_CONTAINERID: invalid characters in container id",
            f"{cid!r} must match {_ID.pattern}",
        )
    if values["CNI_IFNAME"]:
        validate_ifname(values["CNI_IFNAME"])
    return values


def _checked_sandbox(command: str, path: str) -> str:
    """CNI_NETNS as the plugin gets it, once known to be safe to open.

    Never blocks (node_plugin.cni.sandbox): a FIFO or any other file that is no
    namespace is refused at once with 121 (for DEL there is nothing to clean in it: DEL
    goes on without a sandbox, as for a missing one); the caller's own network namespace
    (the node's, for a runtime) is refused for every verb before anything is touched.
    """
    if not path:
        return path
    from node_plugin.cni import sandbox

    found = sandbox.inspect(path)
    if found.kind is sandbox.Kind.CALLERS_OWN:
        raise CniError(
            INVALID_ENV,
            f"CNI_NETNS {path!r} is the node's own network namespace, not a sandbox: "
            f"refusing {command} there",
            found.detail,
        )
    if found.kind is sandbox.Kind.NOT_A_NAMESPACE:
        if command == "DEL":
            return ""
        raise CniError(
            NETNS_UNAVAILABLE, f"CNI_NETNS {path!r} is not a network namespace", found.detail
        )
    return path


def _validate_name(config: Mapping[str, Any]) -> None:
    name = config.get("name")
    if name is None or name == "":
        raise CniError(INVALID_CONFIG, "invalid network config: name: missing network name")
    if not isinstance(name, str) or not _ID.fullmatch(name):
        raise CniError(
            INVALID_CONFIG,
            f"invalid network config: name: {name!r} must match {_ID.pattern}",
        )


def _ok(payload: Mapping[str, Any]) -> CniResponse:
    return CniResponse(0, json.dumps(payload, indent=4).encode() + b"\n")


def _error(err: CniError, version: str) -> CniResponse:
    return CniResponse(1, json.dumps(err.to_json(version), indent=4).encode() + b"\n")
