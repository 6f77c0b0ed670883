"""Who is on the other end of a Unix socket connection, as the kernel says (SO_PEERCRED).

The socket file's mode already keeps other users out; the uid the kernel reports is the
second lock, and it cannot be forged by the peer.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> PeerCredentials:
    """The credentials the peer had when it connected."""
    pid, uid, gid = _PEERCRED.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return PeerCredentials(pid, uid, gid)
