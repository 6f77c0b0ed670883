"""The API server's egress proxy, end to end on loopback: CONNECT, the tunnel both
ways with half-close, and the refusals the API server reports (400, 502)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from devtools.localcluster import egressproxy

DEADLINE_S = 10.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()  # until the client half-closes
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


async def _exchange(sock: Path, request: bytes, payload: bytes = b"") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    body = b""
    if head.startswith(b"HTTP/1.1 200"):
        writer.write(payload)
        writer.write_eof()
        body = await reader.read()
    writer.close()
    return head, body


async def _scenario(tmp: Path) -> None:
    sock = tmp / "egress.sock"
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = echo.sockets[0].getsockname()[1]
    # A port nothing listens on: bound and closed again, so a dial is refused.
    closed = await asyncio.start_server(_echo, "127.0.0.1", 0)
    dead_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    proxy = asyncio.create_task(egressproxy.serve(sock))
    try:
        while not sock.exists():
            await asyncio.sleep(0.01)
        assert sock.stat().st_mode & 0o777 == 0o600
        head, body = await _exchange(
            sock, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(), b"hi"
        )
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert body == b"echo:hi"
        head, _ = await _exchange(sock, f"CONNECT 127.0.0.1:{dead_port} HTTP/1.1\r\n\r\n".encode())
        assert head.startswith(b"HTTP/1.1 502 "), head
        head, _ = await _exchange(sock, b"GET / HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 "), head
    finally:
        proxy.cancel()
        echo.close()
        await echo.wait_closed()


def test_the_proxy_tunnels_and_refuses_what_it_cannot_dial(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_scenario(tmp_path), DEADLINE_S))
