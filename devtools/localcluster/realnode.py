"""The real-node tier: containerd + runc + kubelet, one network namespace per node.

This module only orders the steps of bringing a node up and tearing it down;
each step lives in its own module:

- `containerd` / `crio`: the node's runtime (layout.RUNTIMES: Debian's containerd
  1.6, the built containerd 1.7 / 2.x, or CRI-O), chosen per node;

- `nodenet`: the cluster bridge, the node's netns and veth, the tooling's own
  bridge network and its routes between nodes;
- `nodemounts`: the node's mount namespace (its own /var/lib/cni, /run/cniwarden...);
- `hostres.create_uts_ns`: the node's UTS namespace, hostname = node name (what
  hostNetwork pods see, as on a machine of their own);
- `nodesysctls`: the machine-wide tunables kubelet changes, saved and restored;
- `nodeimages`: the images built here and imported into each node's runtime;
- `egress`: on the first node, the API server's HTTP CONNECT proxy into the cluster
  network (its "cluster" egress: kubelets, pods, Services);
- `kubelet`: kubelet's config, certificate and launch;
- `kubeproxy`: kube-proxy (iptables mode), so pods reach Services such as `kubernetes`;
- `readiness`: when the Node counts as registered (and Ready).

Each node's containerd and kubelet run inside its namespaces (joined with
`nsenter --net= --mount= --uts=`), so kubelet's ports, its iptables chains and the pods' CNI
bridge all live there, and two nodes (or two clusters) never collide. Each node
has its own containerd root/state/socket, kubelet root dir, cgroupRoot and a
host root whose etc/cni/net.d, opt/cni/bin and var/lib/cni are the runtime's
CNI directories (what the node agent's `--host-root` prefixes).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from . import hostres, procs
from .containerd import shim_sockets, start_containerd
from .crio import start_crio
from .egress import start_proxy as start_egress_proxy
from .kube import Kubectl
from .kubelet import start_kubelet
from .kubeproxy import start_kube_proxy
from .layout import DEFAULT_RUNTIME, Layout, NodeLayout
from .nodeimages import import_images
from .nodemounts import make_mount_ns
from .nodenet import plumb_netns, write_bridge_conflist
from .nodesysctls import prepare_kernel
from .readiness import wait_node_registered
from .state import ClusterState, NodeRecord

REFERENCE_PLUGINS = Path("/usr/lib/cni")


def add_node(
    layout: Layout,
    state: ClusterState,
    kubectl: Kubectl,
    index: int,
    *,
    cni: str = "none",
    runtime: str = DEFAULT_RUNTIME,
) -> NodeLayout:
    """Bring up real node `index` on `runtime`; with cni="bridge" also write a
    working network."""
    node = layout.node(index, runtime)
    state.nodes.append(
        NodeRecord(
            index=index,
            name=node.name,
            netns=node.netns,
            veth_host=node.veth_host,
            ip=node.ip,
            dir=str(node.dir),
            cgroup_root=node.cgroup_root,
            containerd_socket=str(node.runtime_socket),
            mntns=str(node.mntns),
            runtime=runtime,
        )
    )
    state.save()
    started = time.monotonic()
    prepare_kernel(state, node)
    for d in (node.cni_conf_dir, node.cni_bin_dir, node.cni_state_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Like a kind node image: the reference plugins are installed (containerd
    # itself needs `loopback`); the operator may add or replace binaries.
    for plugin in sorted(REFERENCE_PLUGINS.iterdir()):
        shutil.copy2(plugin, node.cni_bin_dir / plugin.name)
    plumb_netns(layout, node)
    if index == 0:
        # Before kubelet: the API server reaches every kubelet and pod through it.
        start_egress_proxy(layout, state, node)
    make_mount_ns(layout, node)
    hostres.create_uts_ns(node.utsns, node.name)
    if node.is_crio:
        start_crio(state, node)
    else:
        start_containerd(state, node)
    import_images(layout, node)
    start_kubelet(layout, state, node)
    pod_cidr = wait_node_registered(state, kubectl, node, need_ready=False)
    start_kube_proxy(layout, state, node)
    if cni == "bridge":
        write_bridge_conflist(layout, node, pod_cidr)
        wait_node_registered(state, kubectl, node, need_ready=True)
    state.timings[f"node_{node.name}_up_s"] = round(time.monotonic() - started, 2)
    state.save()
    return node


def teardown_node(state: ClusterState, record: NodeRecord) -> list[str]:
    """Stop and remove one node; returns the errors met (every step is attempted)."""
    errors: list[str] = []
    node_dir = Path(record.dir)
    netns_file = hostres.NETNS_DIR / record.netns

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:
            errors.append(f"{record.name}: {what}: {exc}")

    mine = [p for p in state.processes if p.node == record.name]
    for rec in [p for p in mine if p.name in ("kubelet", "kube-proxy")]:
        attempt(f"stop {rec.name}", functools.partial(procs.stop, rec))
    for rec in [p for p in mine if p.name in ("containerd", "crio")]:
        attempt(f"stop {rec.name}", functools.partial(procs.stop, rec))
    # Containers live in the kubelet's cgroup tree; shims, and anything a CNI
    # plugin may have left running, in the node's namespaces.
    sockets: list[Path] = []
    try:
        sockets = shim_sockets(node_dir / "containerd" / "state")
    except OSError as exc:
        errors.append(f"{record.name}: read shim addresses: {exc}")
    attempt(
        "kill pod processes", lambda: procs.kill_pids(hostres.pids_in_cgroups(record.cgroup_root))
    )
    leftovers: set[int] = set(procs.pids_in_namespace("net", netns_file))
    if record.mntns:
        leftovers |= set(procs.pids_in_namespace("mnt", Path(record.mntns)))
    attempt("kill node processes", lambda: procs.kill_pids(sorted(leftovers - {os.getpid()})))
    for sock in sockets:
        attempt(f"remove {sock}", functools.partial(sock.unlink, missing_ok=True))
    attempt("unmount", lambda: hostres.unmount_under(node_dir))
    attempt("remove cgroups", lambda: hostres.remove_cgroup_tree(record.cgroup_root))
    # The veth first: deleting it removes both ends at once, whereas a netns
    # deletion destroys its links asynchronously.
    attempt("delete veth", lambda: hostres.delete_link(record.veth_host))
    attempt("delete netns", lambda: hostres.delete_netns(record.netns))
    return errors
