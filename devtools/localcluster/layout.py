"""Where a local cluster keeps its files, which ports and addresses it uses.

Pure functions of (root dir, cluster name, slot, short id): no I/O here, so the
plan is unit-testable and two clusters never collide as long as their slots
differ (the slot registry in `slots.py` guarantees that).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

DEFAULT_ROOT = Path("/var/tmp/cniwarden-clusters")
MAX_SLOTS = 100
PORT_BASE = 21000
PORTS_PER_SLOT = 10
NODE_SUBNET_PREFIX = "10.231"
POD_CIDR = "10.244.0.0/16"
NODE_CIDR_MASK = 24
SERVICE_CIDR = "10.96.0.0/16"
IMAGE_REPO = "registry.local/cniwarden"
PAUSE_IMAGE = f"{IMAGE_REPO}/pause:3.10"
BUSYBOX_IMAGE = f"{IMAGE_REPO}/busybox:1.35"
# A real node's container runtime (`noderuntime.py`): Debian's containerd, or one
# that `make tools` builds into .tools/runtimes/<name>/bin.
RUNTIMES = ("containerd-1.6", "containerd-1.7", "containerd-2", "crio")
DEFAULT_RUNTIME = "containerd-1.6"


def parse_runtimes(text: str) -> list[str]:
    """`containerd-2,crio` -> one runtime per real node, in order (the last repeats)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise ValueError(
            f"unknown runtime(s) {', '.join(unknown) or repr(text)}: use {', '.join(RUNTIMES)} "
            "(comma-separated, one per real node; the last repeats)"
        )
    return names


def runtime_of(runtimes: list[str], index: int) -> str:
    """The runtime of real node `index` (0-based) in a per-node list."""
    return runtimes[min(index, len(runtimes) - 1)] if runtimes else DEFAULT_RUNTIME


_NAME_RE = re.compile(r"^[a-z]([a-z0-9-]{0,28}[a-z0-9])?$")


def validate_name(name: str) -> str:
    """Cluster names end up in node names and paths: keep them short DNS labels."""
    if not _NAME_RE.match(name):
        raise ValueError(
            f"invalid cluster name {name!r}: use 1-30 lowercase letters, digits and '-', "
            "starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def for_slot(cls, slot: int) -> Ports:
        base = PORT_BASE + slot * PORTS_PER_SLOT
        return cls(base, base + 1, base + 2, base + 3, base + 4, base + 5)

    def all(self) -> list[int]:
        return [
            self.etcd_client,
            self.etcd_peer,
            self.apiserver,
            self.controller_manager,
            self.scheduler,
            self.kwok,
        ]


class CniHostDirs:
    """The CNI directories a real node's runtime uses, under its host root."""

    if TYPE_CHECKING:  # a dataclass field or a property of the class that mixes this in

        @property
        def host_root(self) -> Path: ...

    @property
    def cni_conf_dir(self) -> Path:
        return self.host_root / "etc/cni/net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.host_root / "opt/cni/bin"

    @property
    def cni_state_dir(self) -> Path:
        return self.host_root / "var/lib/cni"


@dataclass(frozen=True)
class NodeLayout(CniHostDirs):
    """One real node: its own netns, veth, containerd, kubelet and host root."""

    index: int
    name: str
    netns: str
    veth_host: str
    ip: str
    dir: Path
    cgroup_root: str
    runtime: str = DEFAULT_RUNTIME

    @property
    def is_crio(self) -> bool:
        return self.runtime == "crio"

    @property
    def host_root(self) -> Path:
        """Prefix of the node's /etc/cni/net.d, /opt/cni/bin and /var/lib/cni."""
        return self.dir / "host"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def mntns_dir(self) -> Path:
        """A private bind mount holding the node's mount namespace file."""
        return self.dir / "ns"

    @property
    def mntns(self) -> Path:
        return self.mntns_dir / "mnt"

    @property
    def utsns(self) -> Path:
        """The node's UTS namespace (hostname = node name), beside its mount namespace."""
        return self.mntns_dir / "uts"

    @property
    def containerd_dir(self) -> Path:
        return self.dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        """Under the host root, where a node's runtime socket is, so the node agent
        (`--host-root`) finds and asks the runtime as it does on a real node."""
        return self.host_root / "run/containerd/containerd.sock"

    @property
    def crio_dir(self) -> Path:
        return self.dir / "crio"

    @property
    def runtime_socket(self) -> Path:
        """The node's CRI socket (what kubelet and the node agent dial)."""
        if self.is_crio:
            return self.host_root / "run/crio/crio.sock"
        return self.containerd_socket

    @property
    def kubelet_dir(self) -> Path:
        return self.dir / "kubelet"


@dataclass(frozen=True)
class Layout:
    root: Path
    name: str
    slot: int
    short_id: str

    @property
    def workdir(self) -> Path:
        return self.root / self.name

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def egress_socket(self) -> Path:
        """The API server's HTTP CONNECT proxy into the cluster network (`egress`)."""
        return self.workdir / "egress.sock"

    @property
    def etcd_data_dir(self) -> Path:
        return self.workdir / "etcd"

    @property
    def images_dir(self) -> Path:
        return self.workdir / "images"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def ports(self) -> Ports:
        return Ports.for_slot(self.slot)

    @property
    def node_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{NODE_SUBNET_PREFIX}.{self.slot}.0/24")

    @property
    def bridge(self) -> str:
        return f"lc-{self.short_id}-br"

    @property
    def bridge_ip(self) -> str:
        return str(self.node_subnet.network_address + 1)

    def node(self, index: int, runtime: str = DEFAULT_RUNTIME) -> NodeLayout:
        """Real node `index` (0-based). Names stay within IFNAMSIZ (15 chars)."""
        if not 0 <= index < 200:
            raise ValueError(f"real node index {index} out of range 0..199")
        suffix = "" if index == 0 else str(index + 1)
        return NodeLayout(
            index=index,
            name=f"{self.name}-worker{suffix}",
            netns=f"lc-{self.short_id}-n{index}",
            veth_host=f"lc-{self.short_id}-v{index}",
            ip=str(self.node_subnet.network_address + 10 + index),
            dir=self.workdir / "nodes" / f"n{index}",
            cgroup_root=f"/cniwarden-lc-{self.short_id}-n{index}",
            runtime=runtime,
        )

    def fake_node_name(self, index: int) -> str:
        return f"{self.name}-kwok{index}"
