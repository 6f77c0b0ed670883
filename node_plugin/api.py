"""In-process entry point: one CNI invocation in, one answer out.

Used by the console scripts (node_plugin.cli) and by the resident server, so
`handle` never exits the process, never reads os.environ for CNI_* variables,
keeps no per-request global state and is safe to call from several threads.
Importing it is cheap: the protocol layer loads a verb's plugin code on first use.
"""

from __future__ import annotations

from node_plugin.cni.request import (
    BRIDGE,
    HOST_LOCAL,
    PLUGINS,
    CniRequest,
    CniResponse,
    LinkReaper,
)
from node_plugin.cni.skel import dispatch

__all__ = ["BRIDGE", "HOST_LOCAL", "PLUGINS", "CniRequest", "CniResponse", "LinkReaper", "handle"]


def handle(request: CniRequest) -> CniResponse:
    """Run one CNI verb; errors come back as a CNI error JSON with a non-zero exit code."""
    return dispatch(request)
