"""The cni-server probe's client side: it frames a VERSION request and reads one
reply until the server closes, over a real Unix socket served by the test."""

import json
import socket
import threading
from pathlib import Path

import pytest
from cni_operator.healthcheck import probe_cni_server

from node_plugin.server.protocol import Reply, decode_request, encode_reply


def serve_once(path: Path, answer: bytes) -> list[bytes]:
    """Accept one connection, record the request, send `answer`, close."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            seen.append(conn.recv(65536))
            conn.sendall(answer)

    threading.Thread(target=run, daemon=True).start()
    return seen


def test_a_well_formed_version_answer_is_healthy(tmp_path: Path) -> None:
    versions = {"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}
    seen = serve_once(tmp_path / "s", encode_reply(Reply(0, json.dumps(versions).encode())))
    assert probe_cni_server(tmp_path / "s") == "1.0.0, 1.1.0"
    request = decode_request(seen[0])
    assert request.plugin == "cniwarden-host-local"
    assert request.env == {"CNI_COMMAND": "VERSION"}


def test_a_malformed_or_failed_answer_is_a_value_error(tmp_path: Path) -> None:
    serve_once(tmp_path / "a", b"garbage!")
    with pytest.raises(ValueError, match="malformed reply"):
        probe_cni_server(tmp_path / "a")
    serve_once(tmp_path / "b", encode_reply(Reply(11, b'{"code": 11}')))
    with pytest.raises(ValueError, match="exit code 11"):
        probe_cni_server(tmp_path / "b")
