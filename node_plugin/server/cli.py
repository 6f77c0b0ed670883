"""`cniwarden cni-server`: runs the resident CNI server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from node_plugin.server.config import DEFAULT_SOCKET, ServerConfig
from node_plugin.server.delqueue import DEFAULT_DEL_QUEUE
from node_plugin.server.dispatch import node_plugin_handler
from node_plugin.server.server import CniServer, ServerError


def build_parser(prog: str = "cniwarden cni-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
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
    parser.add_argument(
        "--metrics-address",
        default="",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there, e.g. 0.0.0.0:9813 (default: off)",
    )
    return parser


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        socket_path=args.socket,
        del_queue=args.del_queue,
        workers=args.workers,
        request_timeout=args.request_timeout,
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def serve(build: Callable[[], CniServer], metrics_address: str = "") -> int:
    """Builds the server, starts it and runs it until SIGTERM or SIGINT; the exit code.

    The signal handlers come first, so a SIGTERM during the plugins' warm-up imports
    still stops the server cleanly."""
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = build()
    try:
        if metrics_address:
            server.metrics.serve(metrics_address)
        server.start()
    except (ServerError, OSError, ValueError) as e:
        print(f"cni-server: {e}", file=sys.stderr)
        return 1
    while not stop_requested.wait(1.0):
        pass
    server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return serve(lambda: CniServer(node_plugin_handler(), config_from(args)), args.metrics_address)
