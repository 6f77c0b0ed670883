"""`cniwarden cni-server`: runs the resident CNI server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from node_plugin.server.delqueue import DEFAULT_DEL_QUEUE
from node_plugin.server.dispatch import load_handler
from node_plugin.server.server import DEFAULT_SOCKET, CniServer, ServerConfig, ServerError

DEFAULT_HANDLER = "node_plugin.server.dispatch:node_plugin_handler"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cniwarden cni-server",
        description="Serve the cniwarden CNI plugins to the static shim over a Unix socket.",
    )
    parser.add_argument("--socket", type=Path, default=DEFAULT_SOCKET, help="%(default)s")
    parser.add_argument(
        "--del-queue",
        type=Path,
        default=DEFAULT_DEL_QUEUE,
        help="directory of DELs queued while the server was down (%(default)s)",
    )
    parser.add_argument("--workers", type=int, default=8, help="concurrent requests (%(default)s)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=25.0,
        help="seconds before a request is answered 'try again' (%(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="%(default)s")
    parser.add_argument("--handler", default=DEFAULT_HANDLER, help=argparse.SUPPRESS)
    # Tests: DEL leaves tombstones and nothing unregisters them (to kill the server then).
    parser.add_argument("--hold-tombstones", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    config = ServerConfig(
        socket_path=args.socket,
        del_queue=args.del_queue,
        workers=args.workers,
        request_timeout=args.request_timeout,
        hold_tombstones=args.hold_tombstones,
    )
    server = CniServer(load_handler(args.handler), config)
    try:
        server.start()
    except ServerError as e:
        print(f"cni-server: {e}", file=sys.stderr)
        return 1
    while not stop_requested.wait(1.0):
        pass
    server.stop()
    return 0
