"""Binds the server to node_plugin: the same code the standalone plugins run.

Importing this module is cheap; `node_plugin_handler()` does the heavy imports (the
plugins, pyroute2) once at server start so that no request pays for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from node_plugin.server.protocol import Reply, Request

Handler = Callable[[Request], Reply]


def node_plugin_handler() -> Handler:
    api = importlib.import_module("node_plugin.api")
    warm_up = getattr(api, "warm_up", None)
    if callable(warm_up):
        warm_up()

    def handle(request: Request) -> Reply:
        response = api.handle(
            api.CniRequest(plugin=request.plugin, env=request.env, stdin=request.stdin)
        )
        return Reply(exit_code=response.exit_code, stdout=response.stdout)

    return handle


def load_handler(spec: str) -> Handler:
    """`module:factory` -> the Handler the factory returns (tests plug in fakes this way)."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"handler {spec!r} is not of the form module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    handler: Handler = factory()
    return handler
