"""The shim <-> server wire protocol, version 1 (specified in shim/PROTOCOL.md).

Pure framing code, no sockets: readers take a `read_exact(n) -> bytes` callable so the
same parser serves a live connection and a DEL queue file. Every length is checked
against its limit before anything is allocated, so a hostile or broken peer cannot make
the server buffer more than a few MiB.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from node_plugin.cni.request import LinkReaper

MAGIC = b"CNW1"
MAX_PLUGIN = 255
MAX_ENV = 64 << 10
MAX_STDIN = 4 << 20
MAX_STDOUT = 16 << 20
MAX_STDERR = 1 << 20

_U32 = struct.Struct(">I")

ReadExact = Callable[[int], bytes]


class ProtocolError(Exception):
    """A frame that breaks the protocol: bad magic, a length over its limit, a short read."""


@dataclass(frozen=True)
class Request:
    """One CNI invocation as the shim saw it."""

    plugin: str
    env: Mapping[str, str]
    stdin: bytes
    # The caller's network namespace, received with the request (SCM_RIGHTS); the
    # server owns and closes it. Not part of the frame: queued DELs have none.
    netns_fd: int | None = field(default=None, compare=False)
    # The server's reaper, handed to the plugin code (CniRequest.reaper). Not part
    # of the frame either.
    reaper: LinkReaper | None = field(default=None, compare=False)
    # When the answer is due (time.monotonic(); CniRequest.deadline). Not in the frame.
    deadline: float | None = field(default=None, compare=False)

    @property
    def command(self) -> str:
        return self.env.get("CNI_COMMAND", "")

    @property
    def attachment(self) -> tuple[str, str] | None:
        """(container id, ifname): the key that orders requests for one attachment."""
        container = self.env.get("CNI_CONTAINERID", "")
        return (container, self.env.get("CNI_IFNAME", "")) if container else None


@dataclass(frozen=True)
class Reply:
    """What the shim prints and the code it exits with."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = field(default=b"")


def _field(read_exact: ReadExact, limit: int, name: str) -> bytes:
    (length,) = _U32.unpack(read_exact(4))
    if length > limit:
        raise ProtocolError(f"{name} is {length} bytes, over the {limit}-byte limit")
    return read_exact(length)


def decode_env(block: bytes) -> dict[str, str]:
    """`KEY=VALUE\\0...` into a dict; bytes that are not UTF-8 survive as surrogates."""
    env: dict[str, str] = {}
    for item in block.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"environment entry without '=': {item[:40]!r}")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def read_request(read_exact: ReadExact) -> Request:
    if read_exact(4) != MAGIC:
        raise ProtocolError("not a cniwarden request (bad magic or protocol version)")
    plugin = _field(read_exact, MAX_PLUGIN, "plugin name")
    env = decode_env(_field(read_exact, MAX_ENV, "environment"))
    stdin = _field(read_exact, MAX_STDIN, "stdin")
    return Request(plugin=os.fsdecode(plugin), env=env, stdin=stdin)


def read_reply(read_exact: ReadExact) -> Reply:
    if read_exact(4) != MAGIC:
        raise ProtocolError("not a cniwarden reply (bad magic or protocol version)")
    (code,) = _U32.unpack(read_exact(4))
    if code > 255:
        raise ProtocolError(f"exit code {code} out of range")
    stdout = _field(read_exact, MAX_STDOUT, "stdout")
    stderr = _field(read_exact, MAX_STDERR, "stderr")
    return Reply(exit_code=code, stdout=stdout, stderr=stderr)


def encode_request(request: Request) -> bytes:
    env = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in request.env.items())
    plugin = os.fsencode(request.plugin)
    stdin = request.stdin
    parts = [MAGIC, _U32.pack(len(plugin)), plugin, _U32.pack(len(env)), env]
    parts += [_U32.pack(len(stdin)), stdin]
    return b"".join(parts)


def encode_reply(reply: Reply) -> bytes:
    if not 0 <= reply.exit_code <= 255:
        raise ValueError(f"exit code {reply.exit_code} out of range")
    stdout = reply.stdout[:MAX_STDOUT]
    stderr = reply.stderr[:MAX_STDERR]
    parts = [MAGIC, _U32.pack(reply.exit_code), _U32.pack(len(stdout)), stdout]
    parts += [_U32.pack(len(stderr)), stderr]
    return b"".join(parts)


class BufferReader:
    """`read_exact` over a complete buffer; running short is a ProtocolError."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._offset = 0

    def read_exact(self, n: int) -> bytes:
        if self._offset + n > len(self._view):
            raise ProtocolError(f"truncated frame: wanted {n} bytes at offset {self._offset}")
        chunk = bytes(self._view[self._offset : self._offset + n])
        self._offset += n
        return chunk

    @property
    def remaining(self) -> int:
        return len(self._view) - self._offset


def decode_request(data: bytes) -> Request:
    """A whole request frame (a DEL queue entry); trailing bytes are an error."""
    reader = BufferReader(data)
    request = read_request(reader.read_exact)
    if reader.remaining:
        raise ProtocolError(f"{reader.remaining} unexpected bytes after the request")
    return request


def decode_reply(data: bytes) -> Reply:
    reader = BufferReader(data)
    reply = read_reply(reader.read_exact)
    if reader.remaining:
        raise ProtocolError(f"{reader.remaining} unexpected bytes after the reply")
    return reply
