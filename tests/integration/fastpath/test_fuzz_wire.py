"""Fuzzing a live server's wire protocol: random, truncated and mangled frames.

Property: every connection gets a well-formed reply frame (a CNI answer or a protocol
error) or is closed, within a deadline, never a hang; no frame costs the server a thread;
and a shim is served normally afterwards. The server runs in this process with the echo
handler (devtools.fake_handlers), which describes each request it is given.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools import fake_handlers as handlers
from node_plugin.server.protocol import (
    MAGIC,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    encode_request,
)
from tests.integration.fastpath.conftest import ServerFactory, ShimEnv
from tests.integration.fastpath.test_server import server_threads
from tests.integration.plugin.kernel import wait_until
from tests.unit.fuzz.budget import budget

pytestmark = pytest.mark.fuzz

names = st.text(min_size=1, max_size=16).filter(lambda s: "=" not in s and "\0" not in s)
values = st.one_of(
    st.text(max_size=30), st.binary(max_size=30).map(os.fsdecode), st.just("EXIT=300")
).filter(lambda s: "\0" not in s)
requests = st.builds(
    Request,
    plugin=st.sampled_from(["cniwarden-bridge", "cniwarden-host-local", "x", ""]),
    env=st.dictionaries(
        st.one_of(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_ARGS"]), names),
        values,
        max_size=5,
    ),
    stdin=st.binary(max_size=200),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    valid = encode_request(draw(requests))
    return draw(
        st.one_of(
            st.just(valid),
            st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),  # truncated
            st.binary(max_size=200),  # noise
            st.binary(max_size=64).map(lambda b: MAGIC + b),  # noise after the magic
            st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=20)).map(
                lambda t: MAGIC + struct.pack(">I", t[0]) + t[1]  # lying lengths
            ),
        )
    )


def exchange(path: str, frame: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)  # a hang fails the example
        conn.connect(path)
        conn.sendall(frame)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        return data


def test_random_frames_get_an_answer_and_cost_no_thread(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    server = start_server(handlers.echo(), workers=2, read_timeout=1.0, request_timeout=5)
    threads = server_threads()
    path = str(shim.socket_path)

    @budget(200)
    @given(frame=frames())
    def one(frame: bytes) -> None:
        answer = exchange(path, frame)
        assert answer, "closed without a reply"
        reply: Reply = decode_reply(answer)  # a ProtocolError here fails the example
        assert 0 <= reply.exit_code <= 255
        assert server_threads() == threads

    one()
    wait_until(lambda: server.in_flight() == [], "every fuzzed connection to be done")
    assert shim.run("ADD").code == 0, "still serving"
    assert server_threads() == threads
    with pytest.raises(ProtocolError):
        decode_reply(b"not a reply")  # the property above is not vacuous
