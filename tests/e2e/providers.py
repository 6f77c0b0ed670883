"""Where the e2e scenarios run: kind (Docker + kind present) or the local cluster.

Both providers install the same chart with `helm install --wait` and give the
scenarios the same handle (kubectl, two worker nodes with their files and
network namespace, install/upgrade/uninstall). Both run the chart as pods: the
images are built from images/Dockerfile, loaded into the nodes, and Kubernetes
runs the Deployment, the DaemonSet and the pre-delete hook Job.

- kind: `make images` (buildah) and `kind load image-archive` into its nodes.
- local: `make images` (buildah), imported into two real nodes of the local cluster
  (a runtime + kubelet + kube-proxy, each in its own network and mount namespace)
  added for this run (devtools/ship/install.py), by default one on containerd 2.x
  and one on CRI-O (`CNIWARDEN_E2E_RUNTIMES=containerd-1.6,containerd-1.7` picks
  others, in node order): `ctr images import` or `skopeo copy`.

`CNIWARDEN_E2E_PROVIDER=kind|local` forces one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devtools.localcluster import LocalCluster
from devtools.localcluster import images as local_images
from devtools.localcluster.layout import BUSYBOX_IMAGE, parse_runtimes, runtime_of
from devtools.localcluster.toolpaths import tool
from devtools.ship import images as image_build
from devtools.ship.helm import (
    CHART,
    helm,
    install_chart,
    set_args,
    uninstall_release,
    wait_for_agents,
)
from devtools.ship.install import (
    ChartInstall,
    CommandFailedError,
    HookRecord,
    HookWatcher,
    LocalNode,
    build_and_load,
    run,
    wait_for,
)

__all__ = [
    "CommandFailedError",
    "KindProvider",
    "LocalProvider",
    "Node",
    "Provider",
    "run",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[2]
E2E_LABEL = "cniwarden.io/e2e"
# The runtimes of the local provider's nodes, in order (the last repeats): one
# containerd 2.x and one CRI-O node, so every scenario crosses both CRI
# implementations (containerd 1.6, the local cluster's default, runs CI's
# conformance test). CRI-O's runc goes through tools/runc-capfilter: this VM's
# root lacks CAP_SYS_RESOURCE, so the agent pod's OOM score (-997,
# system-node-critical) is clamped to 0 there (devtools/localcluster/crio.py).
RUNTIME_VERSIONS = {  # what kubelet reports as the Node's containerRuntimeVersion
    "containerd-1.6": "containerd://1.6.",
    "containerd-1.7": "containerd://1.7.",
    "containerd-2": "containerd://2.",
    "crio": "cri-o://",
}
DEFAULT_E2E_RUNTIMES = "containerd-2,crio"
E2E_RUNTIMES = parse_runtimes(os.environ.get("CNIWARDEN_E2E_RUNTIMES", DEFAULT_E2E_RUNTIMES))


class Node(Protocol):
    """A worker node the scenarios use: its files (by the node's own paths) and netns."""

    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str: ...
    def read(self, path: str) -> bytes | None: ...
    def write(self, path: str, data: bytes) -> None: ...
    def remove(self, path: str) -> None: ...
    def mtime(self, path: str) -> float: ...
    def listdir(self, path: str) -> list[str]: ...
    def files_under(self, path: str) -> list[str]: ...
    def sh(self, script: str) -> str: ...


class Provider(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def busybox_image(self) -> str: ...
    @property
    def image_pull_policy(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def nodes(self) -> Sequence[Node]: ...
    @property
    def hook(self) -> HookRecord: ...
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]: ...
    def add_nodes(self, count: int = 2) -> None: ...
    def load_images(self, context: Path | None = None) -> dict[str, str]: ...
    def base_values(self) -> dict[str, Any]: ...
    def install(self, values: Mapping[str, Any]) -> str: ...
    def upgrade(self, values: Mapping[str, Any], chart: Path = CHART) -> str: ...
    def uninstall(self) -> str: ...
    def pods(self, component: str | None = None) -> list[dict[str, Any]]: ...
    def logs(self) -> str: ...
    def close(self) -> None: ...


# ======================================================================= local
class LocalProvider(ChartInstall):
    """The local cluster with two real nodes of its own, labelled for this run only
    (nothing else in the session writes to them)."""

    name = "local"
    busybox_image = BUSYBOX_IMAGE
    image_pull_policy = "Never"

    def __init__(self, cluster: LocalCluster, workdir: Path) -> None:
        super().__init__(cluster=cluster, workdir=workdir, nodes=[])
        self.namespace = f"cniwarden-e2e-{self.run_id}"

    @property
    def local_nodes(self) -> list[LocalNode]:
        return list(self.nodes)

    def add_nodes(self, count: int = 2) -> None:
        for i in range(count):
            runtime = runtime_of(E2E_RUNTIMES, i)
            real = self.cluster.add_real_node(cni="none", runtime=runtime)
            version = self.kubectl(
                "get",
                "node",
                real.name,
                "-o",
                "jsonpath={.status.nodeInfo.containerRuntimeVersion}",
            ).stdout
            if not version.replace("://v", "://").startswith(RUNTIME_VERSIONS[runtime]):
                raise CommandFailedError(f"{real.name} runs {version}, not {runtime}")
            self.nodes.append(LocalNode.of(self.cluster, real.name))
            self.kubectl("label", "node", real.name, f"{E2E_LABEL}={self.run_id}", "--overwrite")

    def load_images(self, context: Path | None = None) -> dict[str, str]:
        """`make images` (of this checkout, or of `context`), imported into every real
        node; the image IDs by target, as the CRI reports them."""
        built = build_and_load(self.cluster, context=context)
        return {target: f"sha256:{b.id}" for target, b in built.items()}

    def base_values(self) -> dict[str, Any]:
        values = self.local_values({E2E_LABEL: self.run_id})
        values["agent"]["verbose"] = True
        values["exampleNetwork"].update(name=f"pods-{self.run_id}", bridge=f"cwe{self.run_id}")
        return values


# ======================================================================== kind
def kind_available() -> bool:
    if shutil.which("kind") is None or shutil.which("docker") is None:
        return False
    return run(["docker", "info"], check=False, timeout=30).returncode == 0


@dataclass
class KindNode:
    name: str
    ip: str

    def _exec(self, *argv: str, input: bytes | None = None) -> bytes:
        out = subprocess.run(
            ["docker", "exec", "-i", self.name, *argv],
            input=input,
            capture_output=True,
            check=False,
            timeout=60,
        )
        if out.returncode != 0:
            raise CommandFailedError(
                f"docker exec {self.name} {' '.join(argv)}: {out.stderr.decode()}"
            )
        return out.stdout

    def read(self, path: str) -> bytes | None:
        try:
            return self._exec("cat", path)
        except CommandFailedError:
            return None

    def write(self, path: str, data: bytes) -> None:
        self._exec(
            "sh", "-c", f"cat > '{path}.e2e-tmp' && mv '{path}.e2e-tmp' '{path}'", input=data
        )

    def remove(self, path: str) -> None:
        self._exec("rm", "-f", path)

    def mtime(self, path: str) -> float:
        return float(self._exec("stat", "-c", "%Y", path).decode())

    def listdir(self, path: str) -> list[str]:
        return sorted(
            self._exec("sh", "-c", f"ls -A '{path}' 2>/dev/null || true").decode().split()
        )

    def sh(self, script: str) -> str:
        return self._exec("sh", "-c", script).decode()

    def files_under(self, path: str) -> list[str]:
        text = self._exec(
            "sh", "-c", f"cd '{path}' 2>/dev/null && find . ! -type d || true"
        ).decode()
        return sorted(line.removeprefix("./") for line in text.split())


@dataclass
class KindProvider:
    """kind, from kind-config.yaml: images built from images/ and loaded into the nodes."""

    workdir: Path
    name: str = "kind"
    busybox_image: str = BUSYBOX_IMAGE
    image_pull_policy: str = "Never"
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    _nodes: list[KindNode] = field(default_factory=list)
    installed: bool = False
    hook: HookRecord = field(default_factory=HookRecord)

    @property
    def cluster_name(self) -> str:
        return f"cniwarden-e2e-{self.run_id}"

    @property
    def namespace(self) -> str:
        return "cniwarden-system"

    @property
    def release(self) -> str:
        return "cniwarden"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return run(
            [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            check=check,
            timeout=timeout,
        )

    def add_nodes(self, count: int = 2) -> None:
        run(
            [
                "kind",
                "create",
                "cluster",
                "--name",
                self.cluster_name,
                "--config",
                str(ROOT / "kind-config.yaml"),
                "--kubeconfig",
                str(self.kubeconfig),
                *self.node_image(),
            ],
            timeout=600,
        )
        # The same busybox image the local cluster uses (Debian's static busybox),
        # so no registry is needed.
        busybox = self.workdir / "busybox.tar"
        local_images.build_busybox(busybox)
        run(
            ["kind", "load", "image-archive", str(busybox), "--name", self.cluster_name],
            timeout=600,
        )
        workers = json.loads(
            self.kubectl(
                "get", "nodes", "-l", "!node-role.kubernetes.io/control-plane", "-o", "json"
            ).stdout
        )["items"]
        for item in workers[:count]:
            ip = next(
                a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP"
            )
            self._nodes.append(KindNode(item["metadata"]["name"], ip))
            self.kubectl(
                "label",
                "node",
                item["metadata"]["name"],
                f"{E2E_LABEL}={self.run_id}",
                "--overwrite",
            )

    @staticmethod
    def node_image() -> list[str]:
        """`--image` from CNIWARDEN_KIND_NODE_IMAGE (a node image built offline by
        `python -m devtools.ship.kindnode`), else kind's own default."""
        image = os.environ.get("CNIWARDEN_KIND_NODE_IMAGE", "").strip()
        return ["--image", image] if image else []

    def load_images(self, context: Path | None = None) -> dict[str, str]:
        """Both targets of images/Dockerfile (of this checkout, or of `context`) built
        by `make images` (buildah: no build network needed from Docker) and loaded
        into the nodes as archives; the image IDs by target."""
        built = image_build.build_all(context=context)
        ids = {}
        for image in built:
            run(
                ["kind", "load", "image-archive", str(image.archive), "--name", self.cluster_name],
                timeout=600,
            )
            # kind imports with `ctr images import --digests`: the CRI then names the
            # image by its manifest digest (`...@sha256:<digest>`), which ctr lists.
            node = f"{self.cluster_name}-control-plane"
            listing = run(["docker", "exec", node, "ctr", "-n", "k8s.io", "images", "ls"]).stdout
            digest = next(
                line.split()[2] for line in listing.splitlines() if line.startswith(image.ref + " ")
            )
            ids[image.target] = digest
        return ids

    def base_values(self) -> dict[str, Any]:
        """The two labelled workers only (the control-plane node is not part of the
        run: the network's nodesReady counts the nodes it selects)."""
        selector = {E2E_LABEL: self.run_id}
        return {
            "image": {"pullPolicy": "Never"},
            "controller": {"nodeSelector": selector},
            "agent": {"nodeSelector": selector},
            "exampleNetwork": {
                "enabled": True,
                "name": f"pods-{self.run_id}",
                "bridge": f"cwe{self.run_id}",
                "nodeSelector": selector,
            },
        }

    def install(self, values: Mapping[str, Any]) -> str:
        out = install_chart(
            self.release,
            self.namespace,
            values,
            "--wait",
            "--timeout",
            "5m",
            kubeconfig=self.kubeconfig,
        )
        self.installed = True
        wait_for_agents(self.release, self.namespace, kubeconfig=self.kubeconfig, timeout="5m")
        return out.stdout

    def upgrade(self, values: Mapping[str, Any], chart: Path = CHART) -> str:
        out = helm(
            "upgrade",
            self.release,
            str(chart),
            "-n",
            self.namespace,
            "--wait",
            "--timeout",
            "5m",
            *set_args(values),
            kubeconfig=self.kubeconfig,
        ).stdout
        wait_for_agents(self.release, self.namespace, kubeconfig=self.kubeconfig, timeout="5m")
        return out

    def uninstall(self) -> str:
        watcher = HookWatcher(self.kubectl, self.namespace)
        watcher.start()
        try:
            out = uninstall_release(
                self.release,
                self.namespace,
                "--wait",
                "--timeout",
                "5m",
                kubeconfig=self.kubeconfig,
            )
        finally:
            watcher.stopping.set()
            watcher.join(timeout=60)
        self.hook = watcher.record
        self.installed = False
        return out.stdout

    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = "app.kubernetes.io/name=cniwarden"
        if component:
            selector += f",app.kubernetes.io/component={component}"
        out = self.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def logs(self) -> str:
        return self.kubectl(
            "logs",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/name=cniwarden",
            "--all-containers",
            "--tail=40",
            check=False,
        ).stdout

    def close(self) -> None:
        run(["kind", "delete", "cluster", "--name", self.cluster_name], check=False, timeout=300)


def choose() -> str:
    """`CNIWARDEN_E2E_PROVIDER` (kind | local), else kind when Docker and kind work."""
    wanted = os.environ.get("CNIWARDEN_E2E_PROVIDER", "").strip()
    if wanted:
        if wanted not in ("kind", "local"):
            raise ValueError(f"CNIWARDEN_E2E_PROVIDER={wanted!r}: choose kind or local")
        return wanted
    return "kind" if kind_available() else "local"
