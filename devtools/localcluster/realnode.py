"""The real-node tier: containerd + runc + kubelet, one network namespace per node.

Network layout (per cluster, see `layout.py`):

    root netns:  lc-<id>-br  10.231.<slot>.1/24   (the API server listens here)
                   |-- lc-<id>-v0 ==veth== eth0 10.231.<slot>.10/24  in netns lc-<id>-n0
                   |-- lc-<id>-v1 ==veth== eth0 10.231.<slot>.11/24  in netns lc-<id>-n1

Each node's containerd and kubelet run inside its namespace (joined with
`nsenter --net=`), so kubelet's ports, its iptables chains and the pods' CNI
bridge all live there, and two nodes (or two clusters) never collide. A node
namespace has no default route: pods reach their node, the other nodes and the
API server, nothing beyond. Routes between nodes' pod CIDRs can be added in
the node namespaces later (a routed datapath), with no change here.

Each node has its own containerd root/state/socket, kubelet root dir, cgroupRoot
and a host root whose etc/cni/net.d, opt/cni/bin and var/lib/cni are the
runtime's CNI directories (what the node agent's `--host-root` prefixes).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from . import hostres, images, kubeconfig, procs, slots
from .kube import Kubectl, ready_condition
from .layout import BUSYBOX_IMAGE, PAUSE_IMAGE, POD_CIDR, Layout, NodeLayout
from .pki import CertificateAuthority
from .state import ClusterState, NodeRecord
from .toolpaths import system_tool, tool

READY_TIMEOUT = 180.0
REFERENCE_PLUGINS = Path("/usr/lib/cni")
NAMESPACE = "k8s.io"
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


def setup_bridge(layout: Layout, state: ClusterState) -> None:
    state.bridge = layout.bridge
    state.save()
    prefix = layout.node_subnet.prefixlen
    # Bridged node-to-node traffic must not go through the host's iptables.
    procs.run(
        ["ip", "link", "add", "name", layout.bridge, "type", "bridge", "nf_call_iptables", "0"]
    )
    procs.run(["ip", "addr", "add", f"{layout.bridge_ip}/{prefix}", "dev", layout.bridge])
    procs.run(["ip", "link", "set", "dev", layout.bridge, "up"])


def _plumb_netns(layout: Layout, node: NodeLayout) -> None:
    netns = hostres.add_netns(node.netns)
    procs.run(
        [
            "ip",
            "link",
            "add",
            node.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns,
        ]
    )
    procs.run(["ip", "link", "set", "dev", node.veth_host, "master", layout.bridge, "up"])
    prefix = layout.node_subnet.prefixlen
    for argv in (
        ["ip", "link", "set", "dev", "lo", "up"],
        ["ip", "addr", "add", f"{node.ip}/{prefix}", "dev", "eth0"],
        ["ip", "link", "set", "dev", "eth0", "up"],
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ):
        procs.run(argv, netns=netns)


# Standard paths each node sees as its own (inside its mount namespace).
NODE_PRIVATE_PATHS = (
    Path("/var/lib/cni"),
    Path("/var/lib/kubelet"),
    Path("/var/log/containers"),
    Path("/run/cniwarden"),
    Path("/var/lib/cniwarden"),
)


def _node_binds(node: NodeLayout) -> dict[Path, Path]:
    """Where each node-private standard path comes from.

    /var/lib/cni is the node's `<host_root>/var/lib/cni`, so plugins that use the
    default host-local dataDir or libcni's result cache (/var/lib/cni/results)
    write into the node, where the node agent (`--host-root`) looks. kubelet's
    hard-coded /var/lib/kubelet/device-plugins and /var/log/containers links
    stay per node too. /run/cniwarden (the cni-server's socket, which the shim
    plugins dial at that fixed path) and /var/lib/cniwarden (the shim's DEL
    queue) are the node's `<host_root>/run/cniwarden` and
    `<host_root>/var/lib/cniwarden`, so every node has its own cni-server.
    """
    return {
        Path("/var/lib/cni"): node.cni_state_dir,
        Path("/var/lib/kubelet"): node.dir / "var-lib-kubelet",
        Path("/var/log/containers"): node.dir / "var-log-containers",
        Path("/run/cniwarden"): node.host_root / "run/cniwarden",
        Path("/var/lib/cniwarden"): node.host_root / "var/lib/cniwarden",
    }


def _make_mount_ns(layout: Layout, node: NodeLayout) -> None:
    binds = _node_binds(node)
    for src in binds.values():
        src.mkdir(parents=True, exist_ok=True)
    slots.ensure_host_dirs(layout.root, list(binds))
    hostres.create_mount_ns(node.mntns_dir, binds)


def _containerd_config(node: NodeLayout) -> str:
    state = node.containerd_dir / "state"
    config = {
        "version": 2,
        "root": str(node.containerd_dir / "root"),
        "state": str(state),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
        ],
        "grpc": {"address": str(node.containerd_socket)},
        "plugins": {
            "io.containerd.internal.v1.opt": {"path": str(node.containerd_dir / "opt")},
            "io.containerd.grpc.v1.cri": {
                "sandbox_image": PAUSE_IMAGE,
                "disable_apparmor": True,
                # The VM's root lacks CAP_SYS_RESOURCE, so no process may lower its
                # oom_score_adj (runc fails on the -998 CRI asks for sandboxes):
                # cap every container at containerd's own score instead.
                "restrict_oom_score_adj": True,
                # Pod netns bind mounts under our state dir, not the global /run/netns.
                "netns_mounts_under_state_dir": True,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {
                        "runc": {
                            "runtime_type": "io.containerd.runc.v2",
                            "options": {
                                "SystemdCgroup": False,
                                "BinaryName": str(system_tool("runc")),
                                "Root": str(state / "runc"),
                            },
                        }
                    },
                },
                "cni": {
                    "bin_dir": str(node.cni_bin_dir),
                    "conf_dir": str(node.cni_conf_dir),
                    "max_conf_num": 1,
                },
                "registry": {"config_path": ""},
            },
        },
    }
    return _toml(config)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml(table: dict[str, object], prefix: str = "") -> str:
    """Minimal TOML writer for the nested tables of containerd's config."""
    lines, subtables = [], []
    for key, value in table.items():
        quoted = key if key.replace("_", "").isalnum() else json.dumps(key)
        if isinstance(value, dict):
            subtables.append((f"{prefix}.{quoted}" if prefix else quoted, value))
        else:
            lines.append(f"{quoted} = {_toml_value(value)}")
    out = ""
    if lines:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n\n"
    for name, sub in subtables:
        out += _toml(sub, name)
    return out


def ctr(node: NodeLayout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return procs.run(
        ["ctr", "--address", str(node.containerd_socket), "--namespace", NAMESPACE, *args],
        check=check,
    )


def _start_containerd(state: ClusterState, node: NodeLayout) -> None:
    cfg = node.containerd_dir / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(_containerd_config(node))
    rec = procs.start(
        "containerd",
        [str(system_tool("containerd")), "--config", str(cfg)],
        Path(state.workdir) / "logs" / f"{node.name}-containerd.log",
        netns=node.netns_path,
        mntns=node.mntns,
        node=node.name,
    )
    state.processes.append(rec)
    state.save()

    def serving() -> bool:
        if not node.containerd_socket.exists():
            return False
        return ctr(node, "plugins", "ls", check=False).returncode == 0

    procs.wait_ready(rec, serving, timeout=60, what=f"containerd socket {node.containerd_socket}")


def build_images(layout: Layout) -> list[Path]:
    """The pause and busybox tarballs (built once per cluster, shared by its nodes)."""
    pause = layout.images_dir / "pause.tar"
    busybox = layout.images_dir / "busybox.tar"
    if not pause.exists():
        images.build_pause(pause)
    if not busybox.exists():
        images.build_busybox(busybox)
    return [pause, busybox]


def _import_images(layout: Layout, node: NodeLayout) -> None:
    for tarball in build_images(layout):
        ctr(node, "images", "import", "--snapshotter", "overlayfs", str(tarball))
    listed = ctr(node, "images", "ls", "-q").stdout.split()
    missing = {PAUSE_IMAGE, BUSYBOX_IMAGE} - set(listed)
    if missing:
        raise procs.ComponentError(f"images not imported into {node.name}: {sorted(missing)}")


def _kubelet_config(node: NodeLayout, ca_cert: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": node.ip,
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "imageServiceEndpoint": f"unix://{node.containerd_socket}",
        "failSwapOn": False,
        "failCgroupV1": False,
        # Like kind: never garbage-collect images (they cannot be pulled back)
        # and never evict for disk pressure on a shared dev machine.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "resolvConf": str(node.kubelet_dir / "resolv.conf"),
        "clusterDomain": "cluster.local",
        # No cluster DNS runs; pods resolve via their own loopback, which fails fast.
        "clusterDNS": ["127.0.0.1"],
        "podLogsDir": str(node.dir / "pod-logs"),
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this VM's root lacks.
        "oomScoreAdj": 0,
    }


def _start_kubelet(layout: Layout, state: ClusterState, node: NodeLayout) -> None:
    kdir = node.kubelet_dir
    kdir.mkdir(parents=True, exist_ok=True)
    (node.dir / "pod-logs").mkdir(parents=True, exist_ok=True)
    # Pods resolve through loopback only: no DNS traffic ever leaves the machine.
    (kdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")
    ca = CertificateAuthority.load(layout.pki_dir)
    client = ca.issue(
        f"kubelet-{node.name}",
        f"system:node:{node.name}",
        organizations=("system:nodes",),
        client=True,
    )
    kcfg = kubeconfig.write(
        kdir / "kubeconfig",
        cluster=f"cniwarden-{layout.name}",
        server=state.server,
        ca=ca.pair.cert,
        client=client,
        user=f"system:node:{node.name}",
    )
    config = kdir / "config.yaml"
    config.write_text(yaml.safe_dump(_kubelet_config(node, ca.pair.cert), sort_keys=False))
    hostres.create_cgroup_root(node.cgroup_root)
    rec = procs.start(
        "kubelet",
        [
            str(tool("kubelet")),
            f"--config={config}",
            f"--kubeconfig={kcfg}",
            f"--root-dir={kdir / 'root'}",
            f"--cert-dir={kdir / 'pki'}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.ip}",
            "--v=2",
        ],
        Path(state.workdir) / "logs" / f"{node.name}-kubelet.log",
        netns=node.netns_path,
        mntns=node.mntns,
        node=node.name,
    )
    state.processes.append(rec)
    state.save()

    def healthy() -> bool:
        with_status = kubeconfig.http_get_text(f"http://{node.ip}:10248/healthz")
        return with_status.strip() == "ok"

    procs.wait_ready(rec, healthy, timeout=READY_TIMEOUT, what="kubelet /healthz")


def _prepare_kernel(state: ClusterState, node: NodeLayout) -> None:
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


def node_status(kubectl: Kubectl, name: str) -> dict[str, object] | None:
    out = kubectl("get", "node", name, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    status: dict[str, object] = json.loads(out.stdout)
    return status


def wait_node_registered(
    state: ClusterState, kubectl: Kubectl, node: NodeLayout, *, need_ready: bool
) -> str:
    """Wait until the Node exists with a podCIDR and its runtime is up; returns the podCIDR.

    Without a CNI config the kubelet reports only the network as not ready (the
    operator under test provides it): that counts as up unless `need_ready`.
    """
    kubelet = next(p for p in state.processes if p.name == "kubelet" and p.node == node.name)
    pod_cidr = ""

    def registered() -> bool:
        nonlocal pod_cidr
        obj = node_status(kubectl, node.name)
        if obj is None:
            return False
        spec = obj.get("spec")
        pod_cidr = str(spec.get("podCIDR", "")) if isinstance(spec, dict) else ""
        cond = ready_condition(obj)
        if not pod_cidr or not cond:
            return False
        if cond.get("status") == "True":
            return True
        return not need_ready and "NetworkReady=false" in cond.get("message", "")

    procs.wait_ready(
        kubelet,
        registered,
        timeout=READY_TIMEOUT,
        what=f"node {node.name} registered with a podCIDR" + (" and Ready" if need_ready else ""),
    )
    return pod_cidr


def bridge_conflist(pod_cidr: str, data_dir: Path, name: str = "localcluster") -> dict[str, object]:
    """A plain bridge + host-local network over the node's podCIDR (reference plugins)."""
    gateway = str(ipaddress.IPv4Network(pod_cidr).network_address + 1)
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]],
                    # Other nodes' pods via the node; still no default route.
                    "routes": [{"dst": POD_CIDR}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_bridge_conflist(node: NodeLayout, pod_cidr: str) -> Path:
    conflist = bridge_conflist(pod_cidr, node.cni_state_dir / "networks")
    target = node.cni_conf_dir / "10-localcluster.conflist"
    tmp = node.cni_conf_dir / ".10-localcluster.tmp"
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    tmp.rename(target)
    return target


def add_node(
    layout: Layout, state: ClusterState, kubectl: Kubectl, index: int, *, cni: str = "none"
) -> NodeLayout:
    """Bring up real node `index`; with cni="bridge" also write a working network."""
    node = layout.node(index)
    state.nodes.append(
        NodeRecord(
            index=index,
            name=node.name,
            netns=node.netns,
            veth_host=node.veth_host,
            ip=node.ip,
            dir=str(node.dir),
            cgroup_root=node.cgroup_root,
            containerd_socket=str(node.containerd_socket),
            mntns=str(node.mntns),
        )
    )
    state.save()
    started = time.monotonic()
    _prepare_kernel(state, node)
    for d in (node.cni_conf_dir, node.cni_bin_dir, node.cni_state_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Like a kind node image: the reference plugins are installed (containerd
    # itself needs `loopback`); the operator may add or replace binaries.
    for plugin in sorted(REFERENCE_PLUGINS.iterdir()):
        shutil.copy2(plugin, node.cni_bin_dir / plugin.name)
    _plumb_netns(layout, node)
    _make_mount_ns(layout, node)
    _start_containerd(state, node)
    _import_images(layout, node)
    _start_kubelet(layout, state, node)
    pod_cidr = wait_node_registered(state, kubectl, node, need_ready=False)
    if cni == "bridge":
        write_bridge_conflist(node, pod_cidr)
        wait_node_registered(state, kubectl, node, need_ready=True)
    state.timings[f"node_{node.name}_up_s"] = round(time.monotonic() - started, 2)
    state.save()
    return node


def route_pod_cidrs(state: ClusterState, kubectl: Kubectl) -> dict[str, str]:
    """A routed datapath between real nodes: in each node's namespace, a route to
    every other node's podCIDR via that node's IP on the cluster bridge.

    Only for the tooling's own `bridge` network; with `cni=none` the network
    (and its routes) is the business of whatever is under test.
    """
    cidrs: dict[str, str] = {}
    for rec in state.nodes:
        obj = node_status(kubectl, rec.name)
        spec = obj.get("spec") if obj else None
        if isinstance(spec, dict) and spec.get("podCIDR"):
            cidrs[rec.name] = str(spec["podCIDR"])
    for here in state.nodes:
        netns = hostres.NETNS_DIR / here.netns
        for there in state.nodes:
            if there.name != here.name and there.name in cidrs:
                procs.run(
                    ["ip", "route", "replace", cidrs[there.name], "via", there.ip], netns=netns
                )
    return cidrs


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
    for rec in [p for p in mine if p.name == "kubelet"]:
        attempt("stop kubelet", functools.partial(procs.stop, rec))
    for rec in [p for p in mine if p.name == "containerd"]:
        attempt("stop containerd", functools.partial(procs.stop, rec))
    # Containers live in the kubelet's cgroup tree; shims, and anything a CNI
    # plugin may have left running, in the node's namespaces.
    shim_sockets: list[Path] = []
    try:
        shim_sockets = _shim_sockets(node_dir / "containerd" / "state")
    except OSError as exc:
        errors.append(f"{record.name}: read shim addresses: {exc}")
    attempt(
        "kill pod processes", lambda: procs.kill_pids(hostres.pids_in_cgroups(record.cgroup_root))
    )
    leftovers: set[int] = set(procs.pids_in_namespace("net", netns_file))
    if record.mntns:
        leftovers |= set(procs.pids_in_namespace("mnt", Path(record.mntns)))
    attempt("kill node processes", lambda: procs.kill_pids(sorted(leftovers - {os.getpid()})))
    for sock in shim_sockets:
        attempt(f"remove {sock}", functools.partial(sock.unlink, missing_ok=True))
    attempt("unmount", lambda: hostres.unmount_under(node_dir))
    attempt("remove cgroups", lambda: hostres.remove_cgroup_tree(record.cgroup_root))
    # The veth first: deleting it removes both ends at once, whereas a netns
    # deletion destroys its links asynchronously.
    attempt("delete veth", lambda: hostres.delete_link(record.veth_host))
    attempt("delete netns", lambda: hostres.delete_netns(record.netns))
    return errors


def _shim_sockets(containerd_state: Path) -> list[Path]:
    """Sockets the runc shims made under the host's /run/containerd/s (a fixed path)."""
    tasks = containerd_state / "io.containerd.runtime.v2.task"
    found = []
    if tasks.is_dir():
        for address in tasks.glob("*/*/address"):
            text = address.read_text().strip()
            if text.startswith("unix://"):
                found.append(Path(text.removeprefix("unix://")))
    return found
