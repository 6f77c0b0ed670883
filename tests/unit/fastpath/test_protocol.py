"""The shim <-> server framing (pure; the shim's side is exercised in the integration tests)."""

from __future__ import annotations

import struct

import pytest

from node_plugin.server.protocol import (
    MAGIC,
    MAX_STDIN,
    ProtocolError,
    Reply,
    Request,
    decode_env,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)


def test_request_round_trip_keeps_bytes_and_odd_env_values() -> None:
    request = Request(
        plugin="cniwarden-host-local",
        env={"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b=c;IgnoreUnknown=1", "CNI_NETNS": ""},
        stdin=b'{"a":1}\x00\xff',
    )
    assert decode_request(encode_request(request)) == request
    assert request.attachment is None
    assert request.command == "ADD"


def test_non_utf8_env_survives_the_round_trip() -> None:
    env = decode_env(b"CNI_NETNS=/run/netns/\xff\x00CNI_COMMAND=DEL\x00")
    assert env["CNI_COMMAND"] == "DEL"
    request = Request("p", env, b"")
    assert decode_request(encode_request(request)).env == env


def test_attachment_key_is_container_and_ifname() -> None:
    request = Request("p", {"CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, b"")
    assert request.attachment == ("c", "eth0")


def test_reply_round_trip() -> None:
    reply = Reply(exit_code=7, stdout=b'{"code":7}', stderr=b"log\n")
    assert decode_reply(encode_reply(reply)) == reply


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"CNW2" + b"\0" * 12, "bad magic"),
        (MAGIC + struct.pack(">I", 300), "plugin name is 300 bytes"),
        (
            MAGIC + struct.pack(">I", 0) + struct.pack(">I", 0) + struct.pack(">I", MAX_STDIN + 1),
            "stdin",
        ),
        (MAGIC + struct.pack(">I", 5) + b"ab", "truncated"),
        (encode_request(Request("p", {}, b"x")) + b"extra", "unexpected bytes"),
        (MAGIC + struct.pack(">I", 0) + struct.pack(">I", 2) + b"=x", "without '='"),
    ],
)
def test_bad_request_frames_are_rejected_with_a_reason(frame: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        decode_request(frame)


def test_reply_exit_codes_stay_in_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_reply(Reply(exit_code=256))
    with pytest.raises(ProtocolError, match="out of range"):
        decode_reply(MAGIC + struct.pack(">III", 999, 0, 0))
