"""The chart installed into the local cluster, its workloads run as pods.

`make images` builds both images here (devtools/ship/images.py); `load_images`
imports them into every real node's containerd, as `kind load` does. `helm
install` then creates every object, and kubelet runs what the chart says: the
controller Deployment, the agent DaemonSet (agent + cni-server, with the
chart's securityContext, hostPath mounts, probes and preStop) and, on `helm
uninstall`, the pre-delete hook Job. The pods reach the API server through the
`kubernetes` Service (kube-proxy on every real node), and the DaemonSet's
hostPath volumes are the node's own directories (each real node's mount
namespace binds its /etc/cni/net.d, /opt/cni/bin, /var/lib/cni, /run/netns,
/run/cniwarden and /var/lib/cniwarden, see devtools/localcluster/nodemounts.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.localcluster import LocalCluster, procs
from devtools.localcluster.layout import POD_CIDR, SERVICE_CIDR
from devtools.ship import images as image_build
from devtools.ship.helm import (
    CHART,
    helm,
    install_chart,
    set_args,
    uninstall_release,
    wait_for_agents,
)

# The node paths the chart mounts (hostPath) and where the local node keeps them.
NODE_PATHS = (
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/cni",
    "/run/cniwarden",
    "/var/lib/cniwarden",
)
LABEL_COMPONENT = "app.kubernetes.io/component"
HELM_TIMEOUT = "5m"


class CommandFailedError(AssertionError):
    pass


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else None,
    )
    if check and out.returncode != 0:
        raise CommandFailedError(
            f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
        )
    return out


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 60, interval: float = 0.5
) -> Any:
    """Poll until `check()` is truthy and return it; the last error or value is in the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if last:
                return last
        except (CommandFailedError, KeyError, IndexError, ValueError, OSError) as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last}")
        time.sleep(interval)


def kubeconfig_for_token(base: Path, token: str, target: Path) -> Path:
    """A kubeconfig with the cluster (server, CA) of `base` and a bearer token."""
    config = yaml.safe_load(base.read_text())
    cluster = config["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o600)
    return target


@dataclass
class LocalNode:
    """A real node of the local cluster, by its own paths and namespaces."""

    name: str
    ip: str
    host_root: Path
    netns: Path
    mntns: Path

    def host_path(self, path: str) -> Path:
        """The node's `path` as seen from the machine."""
        for prefix in NODE_PATHS:
            if path == prefix or path.startswith(prefix + "/"):
                return self.host_root / path.lstrip("/")
        raise ValueError(f"{path} is not one of the node paths {NODE_PATHS}")

    def read(self, path: str) -> bytes | None:
        try:
            return self.host_path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        target = self.host_path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def remove(self, path: str) -> None:
        self.host_path(path).unlink(missing_ok=True)

    def mtime(self, path: str) -> float:
        return self.host_path(path).stat().st_mtime

    def listdir(self, path: str) -> list[str]:
        directory = self.host_path(path)
        return sorted(os.listdir(directory)) if directory.is_dir() else []

    def files_under(self, path: str) -> list[str]:
        root = self.host_path(path)
        if not root.exists():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())

    def nsenter(self, argv: Sequence[str]) -> list[str]:
        return procs.nsenter(argv, self.netns, self.mntns)

    def sh(self, script: str) -> str:
        return run(self.nsenter(["sh", "-c", script])).stdout

    @classmethod
    def of(cls, cluster: LocalCluster, name: str) -> LocalNode:
        real = next(n for n in cluster.real_nodes if n.name == name)
        record = next(n for n in cluster.state.nodes if n.name == name)
        return cls(real.name, real.ip, real.host_root, real.netns, Path(record.mntns))


def build_and_load(
    cluster: LocalCluster, tag: str | None = None, context: Path | None = None
) -> dict[str, image_build.BuiltImage]:
    """Both images (`make images`, cached when nothing changed), imported into every
    real node of `cluster`; by target ("controller", "agent")."""
    built = image_build.build_all(tag, context=context)
    cluster.load_images([b.archive for b in built])
    return {b.target: b for b in built}


@dataclass
class HookRecord:
    """What the pre-delete hook Job's pod was and said (helm deletes the Job after it
    succeeds, so it is captured while helm waits)."""

    pod: dict[str, Any] = field(default_factory=dict)
    log: str = ""


class HookWatcher(threading.Thread):
    """Follows the hook Job's pod during `helm uninstall`: its object and its whole log."""

    def __init__(
        self, kubectl: Callable[..., subprocess.CompletedProcess[str]], namespace: str
    ) -> None:
        super().__init__(daemon=True)
        self.kubectl = kubectl
        self.namespace = namespace
        self.record = HookRecord()
        self.stopping = threading.Event()

    def run(self) -> None:
        selector = f"{LABEL_COMPONENT}=uninstall"
        name = ""
        while not self.stopping.is_set():
            out = self.kubectl(
                "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json", check=False
            )
            items = json.loads(out.stdout)["items"] if out.returncode == 0 else []
            started = [
                p
                for p in items
                if any(
                    "running" in (s.get("state") or {}) or "terminated" in (s.get("state") or {})
                    for s in (p.get("status") or {}).get("containerStatuses") or []
                )
            ]
            if started:
                self.record.pod = started[0]
                name = started[0]["metadata"]["name"]
                break
            self.stopping.wait(0.3)
        if not name:
            return
        # Follows until the container exits: the whole log, however fast helm deletes the Job.
        logs = self.kubectl(
            "logs", "-n", self.namespace, "-f", f"pod/{name}", check=False, timeout=600
        )
        self.record.log = logs.stdout + logs.stderr
        pod = self.kubectl("get", "pod", "-n", self.namespace, name, "-o", "json", check=False)
        if pod.returncode == 0:  # its final status, unless helm deleted it already
            self.record.pod = json.loads(pod.stdout)


@dataclass
class ChartInstall:
    """One release of the chart on the local cluster, on the nodes in `nodes`."""

    cluster: LocalCluster
    workdir: Path
    nodes: list[LocalNode]
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    namespace: str = ""
    release: str = ""
    installed: bool = False
    hook: HookRecord = field(default_factory=HookRecord)

    def __post_init__(self) -> None:
        self.namespace = self.namespace or f"cniwarden-{self.run_id}"
        self.release = self.release or f"cw-{self.run_id}"
        self.workdir.mkdir(parents=True, exist_ok=True)

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        try:
            return self.cluster.kubectl(*args, input=input, check=check, timeout=timeout)
        except procs.CommandError as error:
            raise CommandFailedError(str(error)) from None

    def local_values(self, selector: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Values for this cluster: the images imported into the nodes (never pulled),
        the example network on, pods routing the cluster's pod CIDR, its Service CIDR
        (ClusterIPs, DNAT'd by kube-proxy on the node) and the nodes' subnet (no default
        route here: nothing may leave the machine)."""
        node_selector = dict(selector or {})
        example: dict[str, Any] = {
            "enabled": True,
            "podRoutes": [POD_CIDR, SERVICE_CIDR, str(self.cluster.layout.node_subnet)],
        }
        values: dict[str, Any] = {"image": {"pullPolicy": "Never"}, "exampleNetwork": example}
        if node_selector:
            example["nodeSelector"] = node_selector
            values["controller"] = {"nodeSelector": node_selector}
            values["agent"] = {"nodeSelector": node_selector}
        return values

    # ------------------------------------------------------------ helm
    def install(self, values: Mapping[str, Any], chart: Path = CHART) -> str:
        """`helm install --wait`, then every agent pod Ready (see `wait_for_agents`)."""
        self.installed = True
        out = install_chart(
            self.release,
            self.namespace,
            values,
            "--wait",
            "--timeout",
            HELM_TIMEOUT,
            kubeconfig=self.cluster.kubeconfig,
            chart=chart,
        )
        self.save()
        wait_for_agents(
            self.release, self.namespace, kubeconfig=self.cluster.kubeconfig, timeout=HELM_TIMEOUT
        )
        return out.stdout

    def upgrade(self, values: Mapping[str, Any], chart: Path = CHART) -> str:
        """`helm upgrade --wait` of the release to `chart` with `values`."""
        out = helm(
            "upgrade",
            self.release,
            str(chart),
            "-n",
            self.namespace,
            "--wait",
            "--timeout",
            HELM_TIMEOUT,
            *set_args(values),
            kubeconfig=self.cluster.kubeconfig,
        )
        wait_for_agents(
            self.release, self.namespace, kubeconfig=self.cluster.kubeconfig, timeout=HELM_TIMEOUT
        )
        return out.stdout

    def uninstall(self) -> str:
        """`helm uninstall --wait --cascade foreground`: the pre-delete hook Job first
        (its pod and log land in `self.hook`), then every object of the release, and
        helm returns once the pods are gone too (with the default background cascade
        it returns while the agent pods still terminate, and the cni-server's socket
        is removed only as its pod stops)."""
        watcher = HookWatcher(self.kubectl, self.namespace)
        watcher.start()
        try:
            out = uninstall_release(
                self.release,
                self.namespace,
                "--wait",
                "--cascade",
                "foreground",
                "--timeout",
                HELM_TIMEOUT,
                kubeconfig=self.cluster.kubeconfig,
            )
        except RuntimeError as error:
            raise CommandFailedError(f"{error}\n{self.logs()}") from None
        finally:
            watcher.stopping.set()
            watcher.join(timeout=60)
        self.hook = watcher.record
        self.installed = False
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        return out.stdout

    # ------------------------------------------------------------ pods
    def pods(self, component: str | None = None) -> list[dict[str, Any]]:
        selector = "app.kubernetes.io/name=cniwarden"
        if component:
            selector += f",{LABEL_COMPONENT}={component}"
        out = self.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def token_kubeconfig(self, service_account: str, node: str | None = None) -> Path:
        """A kubeconfig with a token of `service_account`; bound to `node` as the token
        kubelet projects into a pod on that node is (it names the node)."""
        bind = ["--bound-object-kind=Node", f"--bound-object-name={node}"] if node else []
        token = self.kubectl(
            "create", "token", service_account, "-n", self.namespace, "--duration=1h", *bind
        ).stdout.strip()
        target = self.workdir / f"kubeconfig-{service_account}{'-' + node if node else ''}"
        return kubeconfig_for_token(self.cluster.kubeconfig, token, target)

    def logs(self, lines: int = 40) -> str:
        return self.kubectl(
            "logs",
            "-n",
            self.namespace,
            "-l",
            "app.kubernetes.io/name=cniwarden",
            "--all-containers",
            "--prefix",
            f"--tail={lines}",
            check=False,
        ).stdout

    # ------------------------------------------------------------ state
    @property
    def state_file(self) -> Path:
        return self.workdir / "install.json"

    def save(self) -> None:
        """Enough to uninstall later from another process (`make demo-down`)."""
        state = {
            "run_id": self.run_id,
            "namespace": self.namespace,
            "release": self.release,
            "nodes": [n.name for n in self.nodes],
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, cluster: LocalCluster, workdir: Path) -> ChartInstall:
        state = json.loads((workdir / "install.json").read_text())
        return cls(
            cluster,
            workdir,
            [LocalNode.of(cluster, n) for n in state["nodes"]],
            run_id=state["run_id"],
            namespace=state["namespace"],
            release=state["release"],
            installed=True,
        )

    def close(self) -> None:
        """Leave nothing behind, even after a failure half-way."""
        if self.installed:
            with contextlib.suppress(Exception):
                self.uninstall()
        listing = self.kubectl("get", "cninetworks", "-o", "name", check=False).stdout.split()
        for name in listing:
            if self.run_id in name:
                self.kubectl(
                    "patch",
                    name,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
                self.kubectl("delete", name, "--wait=false", check=False)
        with contextlib.suppress(Exception):
            uninstall_release(
                self.release,
                self.namespace,
                "--no-hooks",
                "--wait",
                "--timeout",
                "2m",
                kubeconfig=self.cluster.kubeconfig,
            )
        self.kubectl(
            "delete", "namespace", self.namespace, "--wait=false", "--ignore-not-found", check=False
        )
