"""Exec probes for the chart: `python -m cni_operator.healthcheck cni-server --socket PATH`.

Sends the cni-server a real CNI request (VERSION of cniwarden-host-local) over
the socket the shims use, exactly as a shim frames it, and exits 0 only when a
well-formed answer listing supported versions comes back in time. A bare
connect would pass for a server whose workers are stuck, and would log a
protocol error on every probe.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from node_plugin.server.protocol import ProtocolError, Request, decode_reply, encode_request

DEFAULT_SOCKET = Path("/run/cniwarden/cni.sock")
PROBE_PLUGIN = "cniwarden-host-local"


def probe_cni_server(socket_path: Path, timeout: float = 4.0) -> str:
    """The server's VERSION answer; raises OSError or ValueError with the reason."""
    request = Request(plugin=PROBE_PLUGIN, env={"CNI_COMMAND": "VERSION"}, stdin=b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(socket_path))
        conn.sendall(encode_request(request))
        # The server closes the connection after its reply.
        data = b"".join(iter(lambda: conn.recv(65536), b""))
    try:
        reply = decode_reply(data)
    except ProtocolError as error:
        raise ValueError(f"malformed reply: {error}") from None
    if reply.exit_code != 0:
        raise ValueError(f"VERSION answered exit code {reply.exit_code}: {reply.stdout[:200]!r}")
    versions = json.loads(reply.stdout).get("supportedVersions")
    if not versions:
        raise ValueError(f"VERSION answer lists no versions: {reply.stdout[:200]!r}")
    return ", ".join(versions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cni_operator.healthcheck")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("cni-server", help="ask the cni-server for VERSION over its socket")
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET)
    p.add_argument("--timeout", type=float, default=4.0)
    args = parser.parse_args(argv)
    try:
        versions = probe_cni_server(args.socket, args.timeout)
    except (OSError, ValueError) as error:
        print(f"cni-server on {args.socket} is not healthy: {error}", file=sys.stderr)
        return 1
    print(f"cni-server on {args.socket} answers VERSION: {versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
