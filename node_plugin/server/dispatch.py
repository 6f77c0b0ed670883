"""Binds the server to node_plugin: the same code the standalone plugins run.

Importing this module is cheap; `node_plugin_handler()` does the heavy imports (the
plugin modules) once at server start so that no request pays them. pyroute2 is left out:
only VLAN filters use it (node_plugin.kernel.rtnl does the rest) and it costs ~24 MiB of RSS.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from node_plugin import api
from node_plugin.server.protocol import Reply, Request

log = logging.getLogger("cniwarden.cni_server")

Handler = Callable[[Request], Reply]

# What a standalone plugin imports lazily, per verb; the server imports it all up front.
WARM_MODULES = ("node_plugin.cni.skel", "node_plugin.bridge.plugin", "node_plugin.ipam.hostlocal")


def warm_up() -> None:
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            log.warning("warm-up: %s is not available", name)


def node_plugin_handler() -> Handler:
    warm_up()

    def handle(request: Request) -> Reply:
        response = api.handle(
            api.CniRequest(
                plugin=request.plugin,
                env=request.env,
                stdin=request.stdin,
                reaper=request.reaper,
                deadline=request.deadline,
            )
        )
        return Reply(exit_code=response.exit_code, stdout=response.stdout)

    return handle
