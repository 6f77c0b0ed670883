"""A fleet for the operator's integration tests: the real local API server (the
session `cluster` fixture), the CRDs applied, kwok nodes labelled for this run,
the cluster controller and one agent per node as real processes, each agent on
its own tmp host root. Everything is stopped and removed at the end, even when
a test fails."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from cni_operator.node.atomic import sha256_file
from kubernetes.client.exceptions import ApiException

from devtools.localcluster import LocalCluster
from devtools.localcluster.cluster import RealNode

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
GROUP, VERSION = "cniwarden.io", "v1alpha1"
# How long a convergence may take before a wait fails. Generous on purpose: these
# tests run on a shared 2-core machine at load average 10+, where an agent pass
# plus the controller's aggregation can take seconds. The product's latency is
# asserted separately, with the measured time in the message (see "within seconds").
CONVERGE_SECONDS = 60.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Fleet:
    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        nodes: list[str],
        roots: dict[str, Path] | None = None,
        agent_args: dict[str, list[str]] | None = None,
        agent_netns: dict[str, Path] | None = None,
    ) -> None:
        self.cluster = cluster
        self.agent_args = agent_args or {}
        # A real node's network namespace, for an agent whose plugins must touch the
        # node's links (the readiness probe's bridge), as the chart's hostNetwork pod.
        self.agent_netns = agent_netns or {}
        self.run_id = secrets.token_hex(3)
        self.workdir = workdir
        self.nodes = nodes
        self.label = {"cniwarden.io/test-fleet": self.run_id}
        self.roots = roots or {node: workdir / node for node in nodes}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.operator: subprocess.Popen[bytes] | None = None
        self.created: set[str] = set()
        client = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(cluster.kubeconfig)
        )
        self.api = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    # ---------------------------------------------------------- processes
    def _spawn(
        self, args: list[str], log_name: str, netns: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{log_name}.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        enter = [] if netns is None else ["nsenter", f"--net={netns}", "--"]
        return subprocess.Popen(
            [*enter, sys.executable, "-m", "cni_operator.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )

    def start_agent(self, node: str) -> None:
        self.roots[node].mkdir(parents=True, exist_ok=True)
        self.agents[node] = self._spawn(
            [
                "agent",
                "--node-name",
                node,
                "--host-root",
                str(self.roots[node]),
                *self.agent_args.get(node, []),
            ],
            f"agent-{node}",
            self.agent_netns.get(node),
        )

    def start_operator(self) -> None:
        self.operator = self._spawn(["operator", "--stale-agent-seconds", "45"], "operator")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop_agent(self, node: str) -> None:
        self._stop(self.agents.pop(node, None))

    def stop_operator(self) -> None:
        self._stop(self.operator)
        self.operator = None

    def stop_all(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        self.stop_operator()

    def logs(self) -> str:
        out = []
        for path in sorted(self.workdir.glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(out)

    # ---------------------------------------------------------------- API
    def name(self, base: str) -> str:
        return f"{base}-{self.run_id}"

    def apply(
        self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
    ) -> None:
        """`kubectl apply` a CNINetwork selecting this fleet's nodes (and spec's selector)."""
        spec = dict(spec)
        spec["nodeSelector"] = {**self.label, **spec.get("nodeSelector", {})}
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CNINetwork",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec,
        }
        self.created.add(name)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def network(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_cluster_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, "cninetworks", name
        )
        return result

    def node_state(self, node: str) -> dict[str, Any]:
        body: dict[str, Any]
        try:
            body = self.api.get_cluster_custom_object(  # type: ignore[assignment]
                GROUP, VERSION, "cninodestates", node
            )
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        status: dict[str, Any] = body.get("status") or {}
        return status

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        try:
            status = self.network(name).get("status") or {}
        except ApiException:
            return {}
        return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})

    def when(self, name: str, kind: str, status: str = "True") -> dict[str, Any] | None:
        """The condition if it has this status, else None (for `wait`)."""
        cond = self.condition(name, kind)
        return cond if cond.get("status") == status else None

    def ready(self, name: str) -> bool:
        network = self.network(name)
        cond = self.condition(name, "Ready")
        return (
            cond.get("status") == "True"
            and cond.get("observedGeneration") == network["metadata"]["generation"]
        )

    def gone(self, name: str) -> bool:
        try:
            self.network(name)
        except ApiException as error:
            if error.status == 404:
                return True
            raise
        return False

    def delete(self, name: str, wait: bool = True, timeout: float = CONVERGE_SECONDS) -> None:
        self.cluster.kubectl("delete", "cninetwork", name, "--wait=false", check=False)
        if wait:
            self.wait(lambda: self.gone(name), f"{name} deleted", timeout)

    def wait(
        self,
        check: Callable[[], Any],
        what: str,
        timeout: float = CONVERGE_SECONDS,
        interval: float = 0.1,
    ) -> Any:
        """Poll `check` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(ApiException):
                last = check()
                if last:
                    return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about a CNINetwork, found as a user finds them: `kubectl get events
        --field-selector involvedObject.name=NAME` in `default`, where Events about
        cluster-scoped objects live (and where ours are posted)."""
        out = self.cluster.kubectl(
            "get",
            "events",
            "--namespace",
            "default",
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "json",
        )
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def conf_dir(self, node: str) -> Path:
        return self.roots[node] / "etc/cni/net.d"

    def conf_files(self, node: str) -> list[str]:
        directory = self.conf_dir(node)
        return sorted(os.listdir(directory)) if directory.is_dir() else []


@contextlib.contextmanager
def running_fleet(
    cluster: LocalCluster,
    workdir: Path,
    nodes: list[str],
    roots: dict[str, Path] | None = None,
    agent_args: dict[str, list[str]] | None = None,
    agent_netns: dict[str, Path] | None = None,
) -> Iterator[Fleet]:
    """Controller + one agent per node; on exit every CNINetwork the test made is
    deleted (agents clean the nodes), processes stopped, reports and labels removed."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/cninetworks.cniwarden.io",
        "crd/cninodestates.cniwarden.io",
        "crd/cninoderoutes.cniwarden.io",
    )
    fleet = Fleet(cluster, workdir, nodes, roots, agent_args, agent_netns)
    for node in nodes:
        cluster.kubectl(
            "label", "node", node, f"cniwarden.io/test-fleet={fleet.run_id}", "--overwrite"
        )
    try:
        fleet.start_operator()
        for node in nodes:
            fleet.start_agent(node)
        fleet.wait(
            lambda: all(fleet.node_state(n).get("heartbeatTime") for n in nodes),
            "every agent's first report",
            timeout=2 * CONVERGE_SECONDS,
        )
        yield fleet
    finally:
        if fleet.operator is None:
            fleet.start_operator()
        for node in nodes:
            if node not in fleet.agents:
                fleet.start_agent(node)
        for name in sorted(fleet.created):
            try:
                fleet.delete(name)
            except AssertionError:
                cluster.kubectl(
                    "patch",
                    "cninetwork",
                    name,
                    "--type=merge",
                    "-p",
                    '{"metadata":{"finalizers":null}}',
                    check=False,
                )
        fleet.stop_all()
        for node in nodes:
            cluster.kubectl("delete", "cninodestate", node, "--ignore-not-found", check=False)
            cluster.kubectl("label", "node", node, "cniwarden.io/test-fleet-", check=False)


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nodes = cluster.add_fake_nodes(3)
    with running_fleet(cluster, tmp_path_factory.mktemp("fleet"), nodes) as running:
        yield running


def real_node_spec(
    node: RealNode, bridge: str, *, loopback: bool = True, **more: Any
) -> dict[str, Any]:
    """A CNINetwork spec for a real node: cniwarden-bridge on `bridge` (its own name
    per test), host-local over the node's pod CIDR with the leases in the node's own
    store; with `loopback`, the reference `loopback` declared as a binary (containerd
    runs it for every sandbox). `more`: other top-level fields (e.g. `ipam`)."""
    spec: dict[str, Any] = {
        "priority": 10,
        "cniVersion": "1.0.0",  # containerd 1.7 cannot read a 1.1.0 result
        **more,
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {
                    "type": "cniwarden-host-local",
                    "ranges": [[{"subnet": "usePodCIDR"}]],
                    "dataDir": str(node.cni_state_dir / "networks"),
                },
            }
        ],
    }
    if loopback:
        spec["binaries"] = [
            {
                "name": "loopback",
                "sha256": sha256_file(REFERENCE / "loopback"),
                "source": {"file": str(REFERENCE / "loopback")},
            }
        ]
    return spec


def cri_endpoint(node: RealNode) -> str:
    """The node's CRI socket as the node names it (under its host root)."""
    return "/" + str(node.containerd_socket.relative_to(node.host_root))
