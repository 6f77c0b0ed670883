"""Where the e2e scenarios run: kind (Docker + kind present) or the local cluster.

Both providers install the same chart with `helm install` and give the scenarios
the same handle (kubectl, two worker nodes with their files and network
namespace, install/uninstall). They differ only in what runs the chart's pods:

- kind: the images are built from images/, loaded into the nodes, and
  Kubernetes runs the Deployment, the DaemonSet and the pre-delete hook Job.
- local: two real nodes of the local cluster (a runtime + kubelet each in its
  own network and mount namespace) added for this run, by default one on
  containerd 2.x and one on CRI-O (`CNIWARDEN_E2E_RUNTIMES=containerd-1.6,crio`
  picks others, in node order); the chart's containers
  run as processes with their rendered command, arguments, environment and
  ServiceAccount (devtools/ship/localinstall.py).

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
from devtools.localcluster.layout import BUSYBOX_IMAGE, parse_runtimes, runtime_of
from devtools.localcluster.toolpaths import tool
from devtools.ship.helm import install_chart, uninstall_release
from devtools.ship.localinstall import CommandFailedError, LocalInstall, LocalNode, run, wait_for

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
# containerd 2.x and one CRI-O node, so every scenario crosses runtimes.
RUNTIME_VERSIONS = {  # what kubelet reports as the Node's containerRuntimeVersion
    "containerd-1.6": "containerd://1.6.",
    "containerd-1.7": "containerd://1.7.",
    "containerd-2": "containerd://2.",
    "crio": "cri-o://",
}
E2E_RUNTIMES = parse_runtimes(os.environ.get("CNIWARDEN_E2E_RUNTIMES", "containerd-2,crio"))


class Node(Protocol):
    """A worker node the scenarios use: its files (by the node's own paths) and netns."""

    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str: ...
    def read(self, path: str) -> bytes | None: ...
    def write(self, path: str, data: bytes) -> None: ...
    def remove(self, path: str) -> None: ...
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
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]: ...
    def add_nodes(self, count: int = 2) -> None: ...
    def base_values(self) -> dict[str, Any]: ...
    def install(self, values: Mapping[str, Any]) -> str: ...
    def uninstall(self) -> str: ...
    def logs(self) -> str: ...
    def close(self) -> None: ...


# ======================================================================= local
class LocalProvider(LocalInstall):
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
    busybox_image: str = "busybox:1.36.1"
    image_pull_policy: str = "IfNotPresent"
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    _nodes: list[KindNode] = field(default_factory=list)
    installed: bool = False
    tag: str = "e2e"

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
            ],
            timeout=600,
        )
        for image in ("controller", "agent"):
            ref = f"ghcr.io/cniwarden/cniwarden-{image}:{self.tag}"
            run(
                [
                    "docker",
                    "build",
                    "-f",
                    str(ROOT / "images" / image / "Dockerfile"),
                    "-t",
                    ref,
                    str(ROOT),
                ],
                timeout=1200,
            )
            run(["kind", "load", "docker-image", ref, "--name", self.cluster_name], timeout=600)
        run(["docker", "pull", self.busybox_image], timeout=600)
        run(
            ["kind", "load", "docker-image", self.busybox_image, "--name", self.cluster_name],
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

    def base_values(self) -> dict[str, Any]:
        return {
            "image": {"tag": self.tag, "pullPolicy": "IfNotPresent"},
            "exampleNetwork": {
                "enabled": True,
                "name": f"pods-{self.run_id}",
                "bridge": f"cwe{self.run_id}",
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
        return out.stdout

    def uninstall(self) -> str:
        out = uninstall_release(
            self.release, self.namespace, "--wait", "--timeout", "5m", kubeconfig=self.kubeconfig
        )
        self.installed = False
        return out.stdout

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
