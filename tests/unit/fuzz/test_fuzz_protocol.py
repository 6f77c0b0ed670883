"""Fuzzing the shim <-> server frames (pure decoding): any bytes are a request or a
ProtocolError, a truncated frame is always a ProtocolError, and frames round-trip."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_plugin.server.protocol import (
    MAGIC,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from tests.unit.fuzz.budget import budget

pytestmark = pytest.mark.fuzz

names = st.text(min_size=1, max_size=20).filter(lambda s: "=" not in s and "\0" not in s)
values = st.text(max_size=40).filter(lambda s: "\0" not in s)
frames_requests = st.builds(
    Request,
    plugin=st.text(max_size=30).filter(lambda s: len(os.fsencode(s)) <= 255),
    env=st.dictionaries(names, values, max_size=6),
    stdin=st.binary(max_size=300),
)


@budget(500)
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: MAGIC + b)))
def test_any_bytes_are_a_request_or_a_protocol_error(data: bytes) -> None:
    try:
        request = decode_request(data)
    except ProtocolError:
        return
    assert isinstance(request.plugin, str) and isinstance(request.stdin, bytes)
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in request.env.items())
    assert decode_request(encode_request(request)) == request  # what we read, we can write


@budget(300)
@given(request=frames_requests, data=st.data())
def test_a_truncated_request_is_a_protocol_error(request: Request, data: st.DataObject) -> None:
    frame = encode_request(request)
    assert decode_request(frame) == request
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(ProtocolError):
        decode_request(frame[:cut])


@budget(300)
@given(
    code=st.integers(0, 255),
    stdout=st.binary(max_size=200),
    stderr=st.binary(max_size=50),
    length=st.integers(0, 2**32 - 1),
)
def test_replies_round_trip_and_lengths_are_checked(
    code: int, stdout: bytes, stderr: bytes, length: int
) -> None:
    reply = Reply(code, stdout, stderr)
    assert decode_reply(encode_reply(reply)) == reply
    lying = MAGIC + struct.pack(">II", code, length) + stdout
    try:
        decoded = decode_reply(lying)
    except ProtocolError:
        return
    assert decoded.stdout == stdout[:length]
