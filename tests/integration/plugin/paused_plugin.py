"""A test-only build of our plugins that stops after its leases are on disk, until killed.

The killed-ADD tests need an ADD that dies at a known point: the `paused_plugins` fixture
puts small executables under our plugin names in the test's own CNI_PATH directory; each
imports node_plugin, wraps `hostlocal.allocate` (the lease write, also the bridge's
in-process IPAM) so that it touches a marker file and sleeps once the leases are written
and the store unlocked, and runs the normal console entry point. node_plugin itself has
no such hook.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

from node_plugin import cli
from node_plugin.ipam import hostlocal

PAUSE = 600.0  # seconds: far longer than any test waits; the test kills the process


def main(plugin: str, marker: str) -> None:
    allocate = hostlocal.allocate

    def allocate_then_pause(*args: Any, **kwargs: Any) -> Any:
        result = allocate(*args, **kwargs)
        Path(marker).touch()
        time.sleep(PAUSE)
        return result

    entry = {"cniwarden-bridge": cli.bridge_main, "cniwarden-host-local": cli.host_local_main}
    with mock.patch.object(hostlocal, "allocate", allocate_then_pause):
        entry[plugin]()


def wrapper_script(plugin: str, marker: Path, root: Path) -> str:
    """The executable the fixture installs as `plugin`."""
    return (
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from tests.integration.plugin.paused_plugin import main\n"
        f"main({plugin!r}, {str(marker)!r})\n"
    )
