"""Bring a local cluster up at a tier, use it, and tear it down completely."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import (
    clusterdns,
    controlplane,
    egress,
    fakenodes,
    hostres,
    nodeimages,
    nodemounts,
    nodenet,
    nodesysctls,
    procs,
    realnode,
    slots,
)
from .layout import (
    DEFAULT_ROOT,
    DEFAULT_RUNTIME,
    CniHostDirs,
    Layout,
    NodeLayout,
    runtime_of,
    validate_name,
)
from .state import ClusterState
from .tiers import Tier
from .toolpaths import PINNED_TOOLS, tool


class ClusterError(RuntimeError):
    pass


def default_root() -> Path:
    return Path(os.environ.get("CNIWARDEN_CLUSTER_ROOT", DEFAULT_ROOT))


def _log(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RealNode(CniHostDirs):
    """What tests need to know about a real node."""

    name: str
    ip: str
    netns: Path
    host_root: Path
    containerd_socket: Path  # the node's CRI socket, whichever runtime serves it
    runtime: str = DEFAULT_RUNTIME


class LocalCluster:
    """A handle on a running local cluster (made by `up` or re-attached by `attach`)."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.layout = Layout(Path(state.root), state.name, state.slot, state.short_id)

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def tier(self) -> Tier:
        return Tier(self.state.tier)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state.kubeconfig)

    @property
    def workdir(self) -> Path:
        return Path(self.state.workdir)

    @property
    def server(self) -> str:
        return self.state.server

    @property
    def real_nodes(self) -> list[RealNode]:
        return [
            RealNode(
                name=n.name,
                ip=n.ip,
                netns=hostres.NETNS_DIR / n.netns,
                host_root=Path(n.dir) / "host",
                containerd_socket=Path(n.containerd_socket),
                runtime=n.runtime,
            )
            for n in self.state.nodes
        ]

    @property
    def fake_node_names(self) -> list[str]:
        return list(self.state.fake_nodes)

    @property
    def node_names(self) -> list[str]:
        """Every node the tooling made: real nodes first, then fake ones."""
        return [n.name for n in self.state.nodes] + self.fake_node_names

    def host_root(self, node: str | None = None) -> Path:
        """The host root of a real node (the first one by default)."""
        for n in self.real_nodes:
            if node is None or n.name == node:
                return n.host_root
        raise ClusterError(
            f"no real node {node or ''} in cluster {self.name} (tier {self.tier.value})"
        )

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; errors carry its stderr."""
        argv = [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(
            argv, capture_output=True, text=True, input=input, timeout=timeout, check=False
        )
        if check and out.returncode != 0:
            raise procs.CommandError(out.returncode, argv, output=out.stdout, stderr=out.stderr)
        return out

    def add_fake_nodes(self, count: int) -> list[str]:
        """Add `count` kwok nodes (Ready, with a podCIDR); returns their names."""
        if not self.tier.includes(Tier.FAKE_NODES):
            raise ClusterError(f"cluster {self.name} runs tier {self.tier.value}: no kwok")
        return fakenodes.add_fake_nodes(self.layout, self.state, self.kubectl, count)

    def add_real_node(self, cni: str | None = None, runtime: str = DEFAULT_RUNTIME) -> RealNode:
        """Add one more real node on `runtime` (same CNI mode as the cluster unless given)."""
        cni = cni or self.state.cni
        if not self.tier.includes(Tier.REAL_NODE):
            raise ClusterError(f"cluster {self.name} runs tier {self.tier.value}: no real nodes")
        index = max((n.index for n in self.state.nodes), default=-1) + 1
        node = realnode.add_node(
            self.layout, self.state, self.kubectl, index, cni=cni, runtime=runtime
        )
        if cni == "bridge":
            nodenet.route_pod_cidrs(self.state, self.kubectl)
        return next(n for n in self.real_nodes if n.name == node.name)

    def load_images(self, archives: Sequence[Path]) -> None:
        """Import image archives (docker-archive or OCI tarballs, as `make images`
        writes them) into every real node's containerd, as `kind load` does."""
        for node in self.state.nodes:
            nodeimages.import_archives(self.layout.node(node.index, node.runtime), archives)

    def pids(self) -> list[int]:
        return [p.pid for p in self.state.processes if procs.is_alive(p)]

    def memory_rss_kib(self) -> dict[str, int]:
        """Resident memory of every component process (kubelet/containerd per node)."""
        usage: dict[str, int] = {}
        for p in self.state.processes:
            if not procs.is_alive(p):
                continue
            key = f"{p.node}/{p.name}" if p.node else p.name
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        usage[key] = int(line.split()[1])
        return usage

    def down(self) -> None:
        down(self.state)


def _check_tools(tier: Tier) -> None:
    for name in PINNED_TOOLS:
        if name == "kwok" and not tier.includes(Tier.FAKE_NODES):
            continue
        if name in ("kubelet", "kube-proxy") and not tier.includes(Tier.REAL_NODE):
            continue
        tool(name)


def up(
    name: str,
    tier: Tier,
    *,
    root: Path | None = None,
    fake_nodes: int = 3,
    real_nodes: int = 1,
    cni: str = "none",
    owner_pid: int | None = None,
    proxy_mode: str = "iptables",
    runtimes: list[str] | None = None,
) -> LocalCluster:
    """Start a cluster and wait until every component is really ready.

    On any failure everything started so far is torn down and the error (with
    the failing component's log tail) is raised. `runtimes`: one per real node in
    order, the last repeating (default: Debian's containerd 1.6 on every node).
    """
    validate_name(name)
    root = root or default_root()
    _check_tools(tier)
    if tier.includes(Tier.REAL_NODE) and real_nodes < 1:
        raise ClusterError("the real-node tier needs at least one real node")
    workdir = root / name
    if workdir.exists():
        raise ClusterError(
            f"cluster {name!r} already exists at {workdir}: run "
            f"`make cluster-down CLUSTER={name}` (or pick another name)"
        )
    started = time.monotonic()
    slot = slots.claim(root, workdir)
    layout = Layout(root, name, slot, secrets.token_hex(3))
    real = tier.includes(Tier.REAL_NODE)
    api_address = layout.bridge_ip if real else "127.0.0.1"
    state = ClusterState(
        name=name,
        short_id=layout.short_id,
        slot=slot,
        tier=tier.value,
        root=str(root),
        workdir=str(workdir),
        kubeconfig=str(layout.kubeconfig),
        server=f"https://{api_address}:{layout.ports.apiserver}",
        owner_pid=owner_pid,
        cni=cni,
        proxy_mode=proxy_mode,
    )
    state.save()
    cluster = LocalCluster(state)
    try:
        _log(f"{name}: slot {slot}, workdir {workdir}, tier {tier.value}")
        if real:
            nodenet.setup_bridge(layout, state)
        pki = controlplane.create_pki(layout, api_address)
        kcfgs = controlplane.write_kubeconfigs(layout, pki, state.server)
        controlplane.start_etcd(layout, state)
        # Real nodes: pod IPs are reached through a proxy in the first node (egress.py).
        egress_config = egress.write_egress_config(layout) if real else None
        controlplane.start_apiserver(layout, state, pki, api_address, egress_config)
        controlplane.start_controller_manager(layout, state, pki, kcfgs["controller-manager"])
        controlplane.start_scheduler(layout, state, kcfgs["scheduler"])
        controlplane.wait_default_service_account(cluster.kubectl, state)
        state.timings["control_plane_up_s"] = round(time.monotonic() - started, 2)
        _log(f"{name}: control plane ready in {state.timings['control_plane_up_s']}s")
        if tier.includes(Tier.FAKE_NODES):
            t0 = time.monotonic()
            fakenodes.start_kwok(layout, state, str(tool("kwok")))
            fakenodes.add_fake_nodes(layout, state, cluster.kubectl, fake_nodes)
            state.timings["fake_nodes_up_s"] = round(time.monotonic() - t0, 2)
            _log(f"{name}: {fake_nodes} fake nodes Ready in {state.timings['fake_nodes_up_s']}s")
        if real:
            # Cluster DNS, as kubeadm's addon: Pending until a CNI is installed.
            cluster.kubectl("apply", "-f", "-", input=clusterdns.manifest_list())
            t0 = time.monotonic()
            for i in range(real_nodes):
                runtime = runtime_of(runtimes or [], i)
                node: NodeLayout = realnode.add_node(
                    layout, state, cluster.kubectl, i, cni=cni, runtime=runtime
                )
                _log(f"{name}: real node {node.name} up ({node.ip}, {runtime})")
            if cni == "bridge":
                nodenet.route_pod_cidrs(state, cluster.kubectl)
            state.timings["real_nodes_up_s"] = round(time.monotonic() - t0, 2)
        state.timings["total_up_s"] = round(time.monotonic() - started, 2)
        state.save()
    except BaseException:
        _log(f"{name}: bring-up failed, tearing down what was started")
        keep = os.environ.get("CNIWARDEN_KEEP_FAILED_LOGS")
        if keep:
            dest = Path(keep) / f"{name}-{int(time.time())}"
            shutil.copytree(layout.logs_dir, dest, dirs_exist_ok=True)
            _log(f"{name}: logs kept in {dest}")
        try:
            down(state)
        except Exception as exc:
            _log(f"{name}: teardown after failure also failed: {exc}")
        raise
    return cluster


def attach(name: str, root: Path | None = None) -> LocalCluster:
    path = (root or default_root()) / name / "state.json"
    if not path.exists():
        raise ClusterError(f"no cluster {name!r}: {path} does not exist")
    return LocalCluster(ClusterState.load(path))


def layout_of(state: ClusterState) -> Layout:
    return Layout(Path(state.root), state.name, state.slot, state.short_id)


def down(state: ClusterState) -> None:
    """Stop every process by pid and remove everything the cluster created.

    Every step is attempted even when an earlier one fails; the errors are raised
    together at the end, and the state file stays so `down` can be rerun.
    """
    errors: list[str] = []
    for node in reversed(state.nodes):
        errors += realnode.teardown_node(state, node)
    for rec in reversed(state.processes):
        try:
            procs.stop(rec)
        except Exception as exc:
            errors.append(f"stop {rec.name}: {exc}")
    workdir = Path(state.workdir)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("restore sysctls", functools.partial(_restore_sysctls, state)),
        ("unmount", functools.partial(hostres.unmount_under, workdir)),
        ("release mount points", functools.partial(nodemounts.release, layout_of(state))),
        ("remove host dirs", functools.partial(slots.release_host_dirs, Path(state.root), workdir)),
    ]
    if state.bridge:
        steps.append(("delete bridge", functools.partial(hostres.delete_link, state.bridge)))
    for what, fn in steps:
        try:
            fn()
        except Exception as exc:
            errors.append(f"{what}: {exc}")
    if errors:
        raise ClusterError(f"cluster {state.name} teardown incomplete:\n" + "\n".join(errors))
    shutil.rmtree(workdir, ignore_errors=True)
    slots.release(Path(state.root), state.slot, workdir)


def _restore_sysctls(state: ClusterState) -> None:
    """Put back the kernel tunables real nodes changed, unless another cluster's nodes
    run (decided under the registry lock, which a node raising them also holds)."""
    if not state.saved_sysctls:
        return
    with slots.registry_lock(Path(state.root)) as slots_dir:
        if not slots.others_have_real_nodes(slots_dir, Path(state.workdir)):
            nodesysctls.restore_sysctls(state.saved_sysctls)


def down_by_name(name: str, root: Path | None = None) -> bool:
    """Tear down cluster `name`; False when there is nothing to tear down."""
    root = root or default_root()
    path = root / name / "state.json"
    if not path.exists():
        if (root / name).exists():
            shutil.rmtree(root / name, ignore_errors=True)
        return False
    down(ClusterState.load(path))
    return True


def reap_orphans(root: Path | None = None) -> list[str]:
    """Tear down clusters whose owning test session died without cleaning up."""
    root = root or default_root()
    reaped = []
    for workdir in slots.claimed_workdirs(root):
        path = workdir / "state.json"
        if not path.exists():
            continue
        state = ClusterState.load(path)
        if state.owner_pid is None or Path(f"/proc/{state.owner_pid}").exists():
            continue
        with contextlib.suppress(ClusterError):
            down(state)
            reaped.append(state.name)
    return reaped
