"""The machine-wide kernel tunables real nodes change, saved and restored.

Separate because it is the one piece of a real node that is not per node: the
values are shared by every cluster on the machine, so saving and restoring them
is decided under the slot registry's lock, across clusters.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from . import hostres, slots
from .layout import NodeLayout
from .state import ClusterState

# Machine-wide kernel tunables a real node changes, with the value it sets:
# kubelet's own (setupKernelTunables), and inotify limits raised like kind
# advises. inotify instances are counted per user, machine-wide: every kubelet
# and containerd holds several (one test session with three real nodes peaks at
# about 90 for root), so the Debian default of 128 fails a kubelet with
# "inotify_init: too many open files" as soon as a second session runs.
# Restored when the last real node on the machine goes.
KUBELET_SYSCTLS = {
    "vm.overcommit_memory": "1",
    "vm.panic_on_oom": "0",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
RAISED_SYSCTLS = {
    "fs.inotify.max_user_instances": 1024,
    "fs.inotify.max_user_watches": 524288,
}


def prepare_kernel(state: ClusterState, node: NodeLayout) -> None:
    """Remember the machine's tunables, then raise the inotify limits, before this
    node's first daemon starts (containerd watches the CNI conf dir with inotify).

    Under the slot registry's lock, after creating the node's directory: a cluster
    going down at the same moment restores the machine's values only when no other
    cluster has real nodes, and decides that under the same lock. When another
    cluster's nodes run, the live values are their changes: inherit the originals
    that cluster saved instead.
    """
    with slots.registry_lock(Path(state.root)):
        node.dir.mkdir(parents=True, exist_ok=True)
        if not state.saved_sysctls:
            for workdir in slots.claimed_workdirs(Path(state.root)):
                other = workdir / "state.json"
                if workdir == Path(state.workdir) or not other.exists():
                    continue
                with contextlib.suppress(OSError, ValueError, TypeError):
                    saved = ClusterState.load(other).saved_sysctls
                    if saved:
                        state.saved_sysctls = dict(saved)
                        break
        if not state.saved_sysctls:
            keys = [*KUBELET_SYSCTLS, *RAISED_SYSCTLS]
            state.saved_sysctls = {k: hostres.read_sysctl(k) for k in keys}
        state.save()
        for key, minimum in RAISED_SYSCTLS.items():
            if int(hostres.read_sysctl(key)) < minimum:
                hostres.write_sysctl(key, str(minimum))


def restore_sysctls(saved: dict[str, str]) -> None:
    """Put back what we (or kubelet) changed, unless someone changed it since."""
    ours = {**KUBELET_SYSCTLS, **{k: str(v) for k, v in RAISED_SYSCTLS.items()}}
    for key, original in saved.items():
        current = hostres.read_sysctl(key)
        if current != original and current == ours.get(key):
            hostres.write_sysctl(key, original)
