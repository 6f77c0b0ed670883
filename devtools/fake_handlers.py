"""cni-server handlers that stand in for node_plugin, to measure or test the transport alone.

The fast-path tests and bench/fastpath.py (the server's no-op request cost) load them
with `python -m devtools.cniserver_harness --handler devtools.fake_handlers:NAME` in
subprocess servers, or pass them to in-process ones. The shipped `cniwarden cni-server`
cannot load them.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

from node_plugin.server.protocol import Reply, Request
from node_plugin.server.server import Handler


def describe(request: Request) -> bytes:
    return json.dumps(
        {
            "plugin": request.plugin,
            "env": dict(request.env),
            "stdin_len": len(request.stdin),
            "stdin_sha256": hashlib.sha256(request.stdin).hexdigest(),
        }
    ).encode()


def _requested(request: Request, name: str) -> int:
    for item in request.env.get("CNI_ARGS", "").split(";"):
        key, _, value = item.partition("=")
        if key == name:
            return int(value)
    return 0


def echo() -> Handler:
    """Describes the request on stdout; in CNI_ARGS `EXIT=n` picks the exit code and
    `CODE=n` makes it a CNI error n (exit 1), as a plugin would answer."""

    def handle(request: Request) -> Reply:
        code = _requested(request, "CODE")
        if code:
            error = {"cniVersion": "1.1.0", "code": code, "msg": "echo error"}
            return Reply(exit_code=1, stdout=json.dumps(error).encode())
        return Reply(
            exit_code=_requested(request, "EXIT"),
            stdout=describe(request),
            stderr=f"echo handler saw {request.command}\n".encode(),
        )

    return handle


def mirror() -> Handler:
    """Sends stdin back as stdout, byte for byte."""
    return lambda request: Reply(exit_code=0, stdout=request.stdin)


def recording() -> Handler:
    """Appends every request to $CNIWARDEN_TEST_LOG once it is done, after sleeping
    $CNIWARDEN_TEST_DELAY seconds; with $CNIWARDEN_TEST_STARTED set, also appends each
    request there as soon as it starts (tests act on that instead of guessing a time)."""
    path = os.environ["CNIWARDEN_TEST_LOG"]
    started = os.environ.get("CNIWARDEN_TEST_STARTED")
    delay = float(os.environ.get("CNIWARDEN_TEST_DELAY", "0"))
    lock = threading.Lock()

    def record(where: str, request: Request) -> None:
        line = json.dumps(
            {
                "command": request.command,
                "container": request.env.get("CNI_CONTAINERID", ""),
                "time": time.time(),
            }
        )
        with lock, open(where, "a") as log:
            log.write(line + "\n")

    def handle(request: Request) -> Reply:
        if started:
            record(started, request)
        time.sleep(delay)
        record(path, request)
        return Reply(exit_code=0, stdout=b"{}" if request.command == "ADD" else b"")

    return handle
