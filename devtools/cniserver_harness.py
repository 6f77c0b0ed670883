"""`python -m devtools.cniserver_harness`: the cni-server with test seams, for tests and benches.

The shipped `cniwarden cni-server` runs node_plugin and nothing else. Tests and benches
need two more things, and get them here, outside the installed package (devtools is not
in the wheel):

- `--handler MODULE:FACTORY` runs the Handler that FACTORY returns instead of node_plugin
  (devtools.fake_handlers: echo, mirror, recording), to measure or test the transport alone;
- `--hold-tombstones`: DEL still buries veth pairs, but nothing ever unregisters them (the
  tests look at tombstones, or kill the server while some exist).

Every other option is the product's own (node_plugin.server.cli), with the same meaning.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from node_plugin.server import cli
from node_plugin.server.dispatch import node_plugin_handler
from node_plugin.server.reaper import Reaper
from node_plugin.server.server import CniServer, Handler


class HoldingReaper(Reaper):
    """A reaper that unregisters nothing: DEL buries, the tombstones stay."""

    def schedule(self) -> None:
        pass

    def reap_here(self) -> bool:
        return False


def load_handler(spec: str) -> Handler:
    """`module:factory` -> the Handler the factory returns."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"handler {spec!r} is not of the form module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    handler: Handler = factory()
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.build_parser(prog="python -m devtools.cniserver_harness")
    parser.add_argument("--handler", help="MODULE:FACTORY of the handler (default: node_plugin)")
    parser.add_argument("--hold-tombstones", action="store_true")
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    config = cli.config_from(args)

    def build() -> CniServer:
        handler = load_handler(args.handler) if args.handler else node_plugin_handler()
        reaper = HoldingReaper(interval=config.reap_interval) if args.hold_tombstones else None
        return CniServer(handler, config, reaper)

    return cli.serve(build)


if __name__ == "__main__":
    sys.exit(main())
