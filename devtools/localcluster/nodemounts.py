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
    /etc/cni/net.d and /opt/cni/bin are the node's CNI config and binary dirs and
    /run/netns its pods' network namespaces (containerd mounts them there), so a
    pod's hostPath volume of any of these standard paths (the chart's DaemonSet)
    gets this node's directory, as it would on a machine of its own.
    /run/containerd and /run/crio are the node's `<host_root>/run/...`, where its
    runtime's CRI socket is: a pod's hostPath of them (the agent's) finds this
    node's runtime, as on a real node.
    """
    binds = {
        Path("/etc/cni/net.d"): node.cni_conf_dir,
        Path("/opt/cni/bin"): node.cni_bin_dir,
        Path("/run/netns"): node.dir / "netns",
        Path("/var/lib/cni"): node.cni_state_dir,
        Path("/var/lib/kubelet"): node.dir / "var-lib-kubelet",
        Path("/var/log/containers"): node.dir / "var-log-containers",
        Path("/run/cniwarden"): node.host_root / "run/cniwarden",
        Path("/var/lib/cniwarden"): node.host_root / "var/lib/cniwarden",
        Path("/run/containerd"): node.host_root / "run/containerd",
        Path("/run/crio"): node.host_root / "run/crio",
        # CRI-O's pinns pins a pod's namespaces under <namespaces_dir>/<type>ns, and
        # namespaces_dir is /run as on a real node (its default /var/run), so the
        # netns is /run/netns/<id>, which the agent pod mounts; the other kinds stay
        # in the node too.
        **{
            Path(f"/run/{kind}ns"): node.dir / f"{kind}ns" for kind in ("ipc", "uts", "user", "pid")
        },
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


# Mounts made under these inside the node (pod netns files) must reach the
# containers that mount them with HostToContainer propagation: shared.
SHARED = (Path("/run/netns"),)
# `ip netns` owns the host's /run/netns (it never removes it, and lists every
# file in it as a namespace): no hold file there.
# /sys/kernel/mm/hugepages (CRI-O nodes) is sysfs: nothing can be written there.
UNHELD = (Path("/run/netns"), HUGEPAGES)


def held_targets(layout: Layout) -> list[Path]:
    """The host directories the cluster's nodes bind onto and hold (slots.hold_mount_points)."""
    return [t for t in node_binds(layout.node(0)) if t not in UNHELD]


def make_mount_ns(layout: Layout, node: NodeLayout) -> None:
    binds = node_binds(node)
    for src in binds.values():
        src.mkdir(parents=True, exist_ok=True)
    slots.ensure_host_dirs(layout.root, [t for t in binds if t != HUGEPAGES])
    slots.hold_mount_points(held_targets(layout), layout.short_id)
    hostres.create_mount_ns(node.mntns_dir, binds, shared=SHARED)


def release(layout: Layout) -> None:
    """The cluster's holds on the host directories (before they may be removed)."""
    slots.release_mount_points(held_targets(layout), layout.short_id)
