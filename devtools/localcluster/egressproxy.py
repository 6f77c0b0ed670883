"""The API server's HTTP CONNECT proxy into the cluster network (see `egress`).

`python -m devtools.localcluster.egressproxy --socket PATH` serves CONNECT on a
unix socket and dials from the network namespace it runs in. Kept apart from
`egress` (and from the package's imports) so `-m` runs it as a fresh module.

Reading the request and dialing have deadlines; an open tunnel has none (exec
sessions, log follows and watches through the proxy are long-lived by design):
it ends when both sides have closed their direction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

HEAD_TIMEOUT_S = 10.0
DIAL_TIMEOUT_S = 10.0
CHUNK = 65536


class BadConnectError(ValueError):
    """A request that is not `CONNECT <ip>:<port> HTTP/1.x`."""


def parse_connect(head: bytes) -> tuple[str, int]:
    """The (host, port) a CONNECT request asks for; only IP literals (the API
    server dials addresses it resolved itself: node, pod and Service IPs)."""
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadConnectError(f"request line is not ASCII: {head[:80]!r}") from exc
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise BadConnectError(f"not a CONNECT request: {request_line!r}")
    host, sep, port_text = parts[1].rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError as exc:
        raise BadConnectError(f"CONNECT target {parts[1]!r} is not <ip>:<port>") from exc
    if not sep or not 0 < port < 65536:
        raise BadConnectError(f"CONNECT target {parts[1]!r} has no valid port")
    return str(address), port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _refuse(writer: asyncio.StreamWriter, status: str, why: str) -> None:
    print(f"egress: {status}: {why}", file=sys.stderr, flush=True)
    with contextlib.suppress(ConnectionError, OSError):
        writer.write(f"HTTP/1.1 {status}\r\n\r\n".encode())
        await writer.drain()
    writer.close()


async def _handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(client_r.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        host, port = parse_connect(head)
    except (BadConnectError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        await _refuse(client_w, "400 Bad Request", str(exc) or type(exc).__name__)
        return
    except TimeoutError:
        await _refuse(client_w, "408 Request Timeout", "no CONNECT request in time")
        return
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        await _refuse(client_w, "502 Bad Gateway", f"dial {host}:{port}: {exc!r}")
        return
    client_w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await client_w.drain()
    # Each direction until its reader's EOF (half-closes passed on), then both go.
    await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
    for w in (up_w, client_w):
        w.close()


async def serve(socket: Path) -> None:
    socket.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(_handle, path=str(socket))
    os.chmod(socket, 0o600)  # root's API server only
    print(f"egress: serving HTTP CONNECT on {socket}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localcluster.egress")
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
