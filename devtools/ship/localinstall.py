"""The chart installed into the local cluster, its workloads run as processes.

No image can be built or pulled here, so the pods of the chart's Deployment and
DaemonSet never start (image pull policy Never). Every object is still created
by `helm install` and accepted by the real API server; what the pods would run
runs as processes instead, taken from the manifest helm installed:

- the command, arguments and environment of each container (downward-API
  fields filled in as kubelet would), the image's executables mapped to this
  checkout (`cniwarden` -> `python -m cni_operator.cli`, `python` -> this Python);
- under the token of the pod's ServiceAccount, so the chart's RBAC is what the
  processes get;
- the controller and, on each node, the agent and the cni-server inside that
  node's network and mount namespaces (a hostNetwork pod's view: the node's
  /run/cniwarden, /var/lib/cniwarden and /var/lib/cni are its own there); the
  agent gets `--host-root` for the node's CNI directories, and the shims it
  installs come from `build/cni-bin` (`make plugins`), as the image's do.

`uninstall` does what `helm uninstall` does where Jobs can run: the pre-delete
hook's command under the hook's ServiceAccount, `helm uninstall`, then each
pod's preStop command before its processes get SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.localcluster import LocalCluster, procs
from devtools.localcluster.layout import POD_CIDR
from devtools.localcluster.state import ProcessRecord
from devtools.localcluster.toolpaths import REPO_ROOT
from devtools.ship.helm import helm, install_chart, uninstall_release

# The node paths the chart mounts (hostPath) and where the local node keeps them.
NODE_PATHS = (
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/cni",
    "/run/cniwarden",
    "/var/lib/cniwarden",
)
SHIMS = REPO_ROOT / "build" / "cni-bin"


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


@dataclass
class Workload:
    """One container of a rendered pod, as a process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    pre_stop: list[str] | None
    probes: dict[str, dict[str, Any]]
    ports: dict[str, int]


def _container_env(container: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    env = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def _expand(arg: str, env: Mapping[str, str]) -> str:
    for key, value in env.items():
        arg = arg.replace(f"$({key})", value)
    return arg


def executable(argv: Sequence[str]) -> list[str]:
    """The image's executables, from this checkout (same code, same Python)."""
    if argv[0] == "cniwarden":
        return [sys.executable, "-m", "cni_operator.cli", *argv[1:]]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return list(argv)


def workloads(
    manifest: list[dict[str, Any]], kind: str, fields: Mapping[str, str]
) -> list[Workload]:
    """The containers of the (only) `kind` workload of a manifest, ready to run."""
    out = []
    for c in pod_spec(manifest, kind)["containers"]:
        env = _container_env(c, fields)
        argv = executable([_expand(a, env) for a in [*c["command"], *c.get("args", [])]])
        pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command")
        out.append(
            Workload(
                name=c["name"],
                argv=argv,
                env=env,
                pre_stop=executable(pre_stop) if pre_stop else None,
                probes={k: c[k] for k in ("livenessProbe", "readinessProbe") if k in c},
                ports={p["name"]: p["containerPort"] for p in c.get("ports") or []},
            )
        )
    return out


def pod_spec(manifest: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The pod template spec of the (only) `kind` workload of a manifest."""
    (obj,) = [o for o in manifest if o["kind"] == kind]
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def _documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _installed_manifest(release: str, namespace: str, kubeconfig: Path) -> list[dict[str, Any]]:
    """The objects helm installed for `release` (`helm get manifest`)."""
    return _documents(
        helm("get", "manifest", release, "-n", namespace, kubeconfig=kubeconfig).stdout
    )


@dataclass
class LocalInstall:
    """One release of the chart on the local cluster, on the nodes in `nodes`."""

    cluster: LocalCluster
    workdir: Path
    nodes: list[LocalNode]
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    namespace: str = ""
    release: str = ""
    installed: bool = False
    manifest: list[dict[str, Any]] = field(default_factory=list)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

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
        """Values for this cluster: images never pulled, the example network on,
        pods routing the cluster's pod CIDR and the nodes' subnet (no default route
        here: nothing may leave the machine)."""
        node_selector = dict(selector or {})
        example: dict[str, Any] = {
            "enabled": True,
            "podRoutes": [POD_CIDR, str(self.cluster.layout.node_subnet)],
        }
        values: dict[str, Any] = {"image": {"pullPolicy": "Never"}, "exampleNetwork": example}
        if node_selector:
            example["nodeSelector"] = node_selector
            values["controller"] = {"nodeSelector": node_selector}
            values["agent"] = {"nodeSelector": node_selector}
        return values

    # ----------------------------------------------------------- install
    def install(self, values: Mapping[str, Any]) -> str:
        """`helm install`, then the chart's workloads as processes; returns helm's output."""
        out = install_chart(
            self.release, self.namespace, values, kubeconfig=self.cluster.kubeconfig
        )
        self.installed = True
        self.manifest = _installed_manifest(self.release, self.namespace, self.cluster.kubeconfig)
        self._start_processes()
        return out.stdout

    def token_kubeconfig(self, service_account: str, node: str | None = None) -> Path:
        """A kubeconfig with a token of `service_account`; bound to `node` as the token
        kubelet projects into a pod on that node is (it names the node)."""
        bind = ["--bound-object-kind=Node", f"--bound-object-name={node}"] if node else []
        token = self.kubectl(
            "create", "token", service_account, "-n", self.namespace, "--duration=24h", *bind
        ).stdout.strip()
        target = self.workdir / f"kubeconfig-{service_account}{'-' + node if node else ''}"
        return kubeconfig_for_token(self.cluster.kubeconfig, token, target)

    @staticmethod
    def fields(node: LocalNode) -> dict[str, str]:
        # hostNetwork pods: the pod IP is the node's.
        return {"spec.nodeName": node.name, "status.podIP": node.ip}

    def _start(self, key: str, w: Workload, node: LocalNode, env: dict[str, str]) -> None:
        self.processes[key] = procs.start(
            key,
            w.argv,
            self.workdir / f"{key}.log",
            env={**w.env, **env},
            cwd=REPO_ROOT,
            netns=node.netns,
            mntns=node.mntns,
        )

    # ------------------------------------------------------------- state
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
            "processes": {k: dataclasses.asdict(v) for k, v in self.processes.items()},
        }
        self.state_file.write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, cluster: LocalCluster, workdir: Path) -> LocalInstall:
        state = json.loads((workdir / "install.json").read_text())
        install = cls(
            cluster,
            workdir,
            [LocalNode.of(cluster, n) for n in state["nodes"]],
            run_id=state["run_id"],
            namespace=state["namespace"],
            release=state["release"],
            installed=True,
        )
        install.processes = {k: ProcessRecord(**v) for k, v in state["processes"].items()}
        install.manifest = _installed_manifest(
            install.release, install.namespace, cluster.kubeconfig
        )
        return install

    def _start_processes(self) -> None:
        if not (SHIMS / "cniwarden-bridge").exists():
            raise CommandFailedError(f"{SHIMS} has no shims: run `make plugins`")
        controller_kc = self.token_kubeconfig(
            pod_spec(self.manifest, "Deployment")["serviceAccountName"]
        )
        agent_sa = pod_spec(self.manifest, "DaemonSet")["serviceAccountName"]
        first = self.nodes[0]
        (controller,) = workloads(self.manifest, "Deployment", self.fields(first))
        self._start("controller", controller, first, {"KUBECONFIG": str(controller_kc)})
        for node in self.nodes:
            agent_kc = self.token_kubeconfig(agent_sa, node.name)
            for w in workloads(self.manifest, "DaemonSet", self.fields(node)):
                env = {"KUBECONFIG": str(agent_kc)}
                if w.name == "agent":
                    w.argv.append(f"--host-root={node.host_root}")
                    env["CNIWARDEN_OWN_BIN_DIR"] = str(SHIMS)
                self._start(f"{w.name}-{node.name}", w, node, env)
        self.save()

    def process_alive(self, key: str) -> bool:
        rec = self.processes.get(key)
        return rec is not None and procs.is_alive(rec)

    def probe(self, node: LocalNode, container: str, kind: str = "DaemonSet") -> str:
        """Run a container's readiness probe the way kubelet would; raise if it fails."""
        (w,) = [x for x in workloads(self.manifest, kind, self.fields(node)) if x.name == container]
        probe = w.probes["readinessProbe"]
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            port = w.ports.get(port, port)
            url = f"http://{node.ip}:{port}{probe['httpGet']['path']}"
            wait = probe.get("timeoutSeconds", 1)  # Kubernetes' default
            check = f"import urllib.request as u; print(u.urlopen({url!r}, timeout={wait}).status)"
            return node.sh(f"exec {sys.executable} -c {shlex.quote(check)}")
        argv = executable(list(probe["exec"]["command"]))
        return run(node.nsenter(argv)).stdout

    # --------------------------------------------------------- uninstall
    def uninstall(self) -> str:
        """What `helm uninstall` does on a cluster where the hook Job can run."""
        kc = self.cluster.kubeconfig
        hooks = [
            d
            for d in _documents(
                helm("get", "hooks", self.release, "-n", self.namespace, kubeconfig=kc).stdout
            )
            if "pre-delete" in d["metadata"].get("annotations", {}).get("helm.sh/hook", "")
        ]
        support = json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [d for d in hooks if d["kind"] != "Job"]}
        )
        jobs = [d for d in hooks if d["kind"] == "Job"]
        log: list[str] = []
        if jobs:
            self.kubectl("apply", "-f", "-", input=support)
            try:
                spec = jobs[0]["spec"]["template"]["spec"]
                hook_kc = self.token_kubeconfig(spec["serviceAccountName"])
                (c,) = spec["containers"]
                argv = executable([*c["command"], *c.get("args", [])])
                env = {**os.environ, "KUBECONFIG": str(hook_kc)}
                hook = run(argv, env=env, timeout=600, check=False)
                log.append(hook.stdout + hook.stderr)
                if hook.returncode != 0:
                    raise CommandFailedError(
                        f"pre-delete hook failed:\n{hook.stdout}{hook.stderr}\n{self.logs()}"
                    )
            finally:
                self.kubectl("delete", "-f", "-", "--ignore-not-found", input=support, check=False)
        log.append(
            uninstall_release(
                self.release, self.namespace, "--no-hooks", "--wait", kubeconfig=kc
            ).stdout
        )
        self.installed = False
        log += self.stop_processes()
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        return "\n".join(log)

    def stop_processes(self) -> list[str]:
        """Each node container's preStop (as kubelet runs it), then SIGTERM to all."""
        out = []
        for node in self.nodes if self.manifest else []:
            for w in workloads(self.manifest, "DaemonSet", self.fields(node)):
                if not w.pre_stop or not self.process_alive(f"{w.name}-{node.name}"):
                    continue
                argv = [
                    a.replace("--host-root=/", f"--host-root={node.host_root}") for a in w.pre_stop
                ]
                result = run(node.nsenter(argv), check=False)
                said = f"{result.stdout.strip()} {result.stderr.strip()}".strip()
                out.append(f"preStop {w.name}@{node.name}: {said or '(done)'}")
        for key, rec in list(self.processes.items()):
            procs.stop(rec)
            del self.processes[key]
        return out

    def logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {path.name}\n{procs.log_tail(path, lines)}"
            for path in sorted(self.workdir.glob("*.log"))
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
        self.stop_processes()
        with contextlib.suppress(Exception):
            uninstall_release(
                self.release, self.namespace, "--no-hooks", kubeconfig=self.cluster.kubeconfig
            )
        self.kubectl(
            "delete", "namespace", self.namespace, "--wait=false", "--ignore-not-found", check=False
        )
