"""Console entry points: read env + stdin, call api.handle, write stdout, exit with its code."""

from __future__ import annotations

import logging
import os
import sys

from node_plugin import api


def _main(plugin: str) -> None:
    level = os.environ.get("CNIWARDEN_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(stream=sys.stderr, level=level, format=f"{plugin}: %(message)s")
    logging.getLogger("pyroute2").setLevel(max(logging.getLogger().level, logging.INFO))
    command = os.environ.get("CNI_COMMAND", "")
    # VERSION (and the bare "about" call) need no stdin; never block on it.
    stdin = b"" if command in ("", "VERSION") else sys.stdin.buffer.read()
    response = api.handle(api.CniRequest(plugin=plugin, env=os.environ, stdin=stdin))
    sys.stdout.buffer.write(response.stdout)
    sys.stdout.buffer.flush()
    sys.exit(response.exit_code)


def bridge_main() -> None:
    _main(api.BRIDGE)


def host_local_main() -> None:
    _main(api.HOST_LOCAL)
