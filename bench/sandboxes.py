"""The benches' sandboxes: a private "node" namespace the bench process moves into, plus
one network namespace per sandbox, all deleted at the end even on failure.

Creating and deleting them is `ip netns` (named, so the plugins get a path as a runtime
gives them); entering is node_plugin.kernel.netns, the node's one namespace toolkit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from node_plugin.kernel import netns

NETNS_DIR = "/run/netns"


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into the named netns; exec'd plugins start there too."""
    netns.join(f"{NETNS_DIR}/{name}")


def cni_env(
    command: str, container: str, sandbox: str, ifname: str, cni_path: str
) -> dict[str, str]:
    """What a runtime hands an exec'd plugin, for a sandbox made by namespaces()."""
    return {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": f"{NETNS_DIR}/{sandbox}",
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path,
    }


@contextlib.contextmanager
def namespaces(prefix: str, count: int, host: str) -> Iterator[tuple[str, list[str]]]:
    """`<prefix>-<host>` and `count` sandboxes `<prefix>-s<i>`, deleted in reverse order."""
    made: list[str] = []
    try:
        for name in [f"{prefix}-{host}", *(f"{prefix}-s{i}" for i in range(count))]:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            made.append(name)
        yield made[0], made[1:]
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
