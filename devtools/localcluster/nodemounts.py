"""A real node's mount namespace: the standard paths each node must see as its own.

Separate because it is what lets several nodes share one machine's filesystem:
containerd and kubelet (and the CNI plugins they exec) use fixed paths such as
/var/lib/cni and /run/cniwarden, which here are bound to per-node directories.
"""

from __future__ import annotations

from pathlib import Path

from . import hostres, slots
from .layout import Layout, NodeLayout


def node_binds(node: NodeLayout) -> dict[Path, Path]:
    """Where each node-private standard path comes from.

    /var/lib/cni is the node's `<host_root>/var/lib/cni`, so plugins that use the
    default host-local dataDir or libcni's result cache (/var/lib/cni/results)
    write into the node, where the node agent (`--host-root`) looks. kubelet's
    hard-coded /var/lib/kubelet/device-plugins and /var/log/containers links
    stay per node too. /run/cniwarden (the cni-server's socket, which the shim
    plugins dial at that fixed path) and /var/lib/cniwarden (the shim's DEL
    queue) are the node's `<host_root>/run/cniwarden` and
    `<host_root>/var/lib/cniwarden`, so every node has its own cni-server.
    /run/containerd and /run/crio are the node's `<host_root>/run/...`, where its
    runtime's CRI socket is: a pod's hostPath of them (the agent's) finds this
    node's runtime, as on a real node.
    """
    binds = {
        Path("/var/lib/cni"): node.cni_state_dir,
        Path("/var/lib/kubelet"): node.dir / "var-lib-kubelet",
        Path("/var/log/containers"): node.dir / "var-log-containers",
        Path("/run/cniwarden"): node.host_root / "run/cniwarden",
        Path("/var/lib/cniwarden"): node.host_root / "var/lib/cniwarden",
        Path("/run/containerd"): node.host_root / "run/containerd",
        Path("/run/crio"): node.host_root / "run/crio",
    }
    if node.is_crio and not _hugetlb_mounted():
        # CRI-O believes /proc/cgroups (hugetlb listed) and passes kubelet's hugepage
        # limits to runc, which fails on a host where no hugetlb hierarchy is
        # mounted (this VM). With no page sizes in its view, kubelet asks for none.
        binds[HUGEPAGES] = node.dir / "no-hugepages"
    return binds


HUGEPAGES = Path("/sys/kernel/mm/hugepages")


def _hugetlb_mounted() -> bool:
    return any("hugetlb" in mp.name.split(",") for mp in hostres.cgroup_mount_points())


def make_mount_ns(layout: Layout, node: NodeLayout) -> None:
    binds = node_binds(node)
    for src in binds.values():
        src.mkdir(parents=True, exist_ok=True)
    slots.ensure_host_dirs(layout.root, [t for t in binds if t != HUGEPAGES])
    hostres.create_mount_ns(node.mntns_dir, binds)
