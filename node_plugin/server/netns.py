"""Runs a request in the caller's network namespace, on the current thread only.

An exec'd plugin does its host-side work (bridge, host veth, masquerade rules) in the
runtime's network namespace. The shim sends that namespace along with the request, and
the worker thread enters it for the request and returns to its own afterwards. In
production the server shares the node's namespace and nothing changes hands; tests run
plugins in private "host" namespaces and get the same semantics as with exec.

The entering and returning is node_plugin.kernel.netns's (the standalone plugin's); this adds
what a resident server needs on top: no namespace means "stay", and a thread that
cannot return ends the process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from node_plugin.cni.errors import CniError
from node_plugin.kernel import netns


class NetnsError(Exception):
    pass


@contextlib.contextmanager
def entered(netns_fd: int | None) -> Iterator[None]:
    """Inside the block the calling thread is in `netns_fd`'s namespace (None: unchanged).

    NetnsError when it cannot be entered; exceptions of the block pass through.
    """
    if netns_fd is None:
        yield
        return
    inside = False
    try:
        with netns.entered(netns_fd):
            inside = True
            yield
    except (CniError, OSError) as e:
        if inside:
            raise
        raise NetnsError(f"cannot enter the caller's network namespace: {e}") from e
    except netns.NetnsRestoreError:
        # A worker left in a foreign namespace would corrupt every later request.
        os.write(2, b"cni-server: cannot return a worker to its netns; exiting\n")
        os._exit(70)
