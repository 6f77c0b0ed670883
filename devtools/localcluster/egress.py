"""The API server's way into the cluster network: an HTTP CONNECT proxy.

The local cluster's API server runs in the machine's root network namespace,
which has no route to pod IPs (and cannot be given one: every local cluster
uses the same pod CIDR, so host routes would collide between clusters running
at once). A real control plane in that position uses Konnectivity: the API
server's `EgressSelectorConfiguration` sends its "cluster" traffic (to nodes,
pods and Services: kubelet logs/exec/port-forward, the pods/services/nodes
proxy) through an HTTP CONNECT proxy that sits where the cluster network is.

Here that proxy listens on a unix socket in the cluster's directory (the API
server dials it from the root namespace, as the "uds" transport allows) and
runs inside the first real node's network namespace, whose routes are the
cluster's: its own pods, the other nodes' pod CIDRs (the CNI's routes) and
ClusterIPs (kube-proxy). It is recorded like every daemon, stopped on `down`,
and lives in the node's namespace, so a node teardown ends it too.

`python -m devtools.localcluster.egress --socket PATH` runs the proxy.
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

import yaml

from . import procs
from .layout import Layout, NodeLayout
from .state import ClusterState

HEAD_TIMEOUT_S = 10.0
DIAL_TIMEOUT_S = 10.0
CHUNK = 65536
READY_TIMEOUT_S = 30.0


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


def egress_config(socket: Path) -> dict[str, object]:
    """The API server's EgressSelectorConfiguration: "cluster" traffic via the proxy."""
    return {
        "apiVersion": "apiserver.k8s.io/v1beta1",
        "kind": "EgressSelectorConfiguration",
        "egressSelections": [
            {
                "name": "cluster",
                "connection": {
                    "proxyProtocol": "HTTPConnect",
                    "transport": {"uds": {"udsName": str(socket)}},
                },
            }
        ],
    }


def write_egress_config(layout: Layout) -> Path:
    path = layout.workdir / "egress-selector.yaml"
    path.write_text(yaml.safe_dump(egress_config(layout.egress_socket), sort_keys=False))
    return path


def start_proxy(layout: Layout, state: ClusterState, node: NodeLayout) -> None:
    """The proxy in `node`'s network namespace, serving once its socket answers."""
    sock = layout.egress_socket
    sock.unlink(missing_ok=True)
    rec = procs.start(
        "egress-proxy",
        [sys.executable, "-m", "devtools.localcluster.egress", f"--socket={sock}"],
        layout.logs_dir / "egress-proxy.log",
        netns=node.netns_path,
        cwd=Path(__file__).resolve().parents[2],
        node=node.name,
    )
    state.processes.append(rec)
    state.save()
    procs.wait_ready(rec, sock.is_socket, timeout=READY_TIMEOUT_S, what=f"socket {sock}")


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
