"""CNI 1.1.0's STATUS and GC verbs as the runtimes use them, on real nodes whose
pod network is ours (the static shims in the bin dir, a cni-server in the node's
namespaces, a `cniVersion: 1.1.0` conflist):

- containerd 2.x asks STATUS whenever kubelet asks CRI Status (every 5 s). With
  the cni-server down the shim answers 50, containerd says NetworkReady=false,
  kubelet turns the Node NotReady and the node controller taints it NoSchedule,
  so the scheduler sends it no pod; with the server back the node turns Ready.
  Both transitions are measured. Meanwhile the node agent reports the runtime's
  verdict against its model (the files are fine, the runtime is not).
- CRI-O calls GC when it starts, naming the sandboxes it still has: a lease left
  by a sandbox that died while CRI-O was down is released, the live pod's kept.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.cri import RuntimeProbe

from devtools.localcluster import LocalCluster, RealNode, crio, procs
from devtools.localcluster.pods import busybox_pod
from devtools.localcluster.state import ProcessRecord

from .conftest import running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[3]
SHIMS = ROOT / "build" / "cni-bin"
# kubelet asks the runtime every 5 s and reports a change at once; the node
# controller taints within its 5 s monitor period. Generous for a loaded machine.
TRANSITION_SECONDS = 90.0


def wait_until(check: Callable[[], Any], what: str, timeout: float) -> tuple[Any, float]:
    """Poll `check` (0.1 s) until truthy: (its value, seconds taken)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        value = check()
        if value:
            return value, time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


@dataclass
class ServedNode:
    """A real node of one runtime whose pod network is cniwarden's."""

    cluster: LocalCluster
    real: RealNode
    index: int
    mntns: Path
    network: str
    log_dir: Path
    server: ProcessRecord | None = None

    @property
    def leases(self) -> Path:
        return self.real.cni_state_dir / "networks" / self.network

    @property
    def socket(self) -> Path:
        return self.real.host_root / "run/cniwarden/cni.sock"

    def start_server(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.server = procs.start(
            f"cni-server-{self.real.name}",
            [sys.executable, "-m", "cni_operator.cli", "cni-server", "--workers=4"],
            self.log_dir / f"cni-server-{self.real.name}.log",
            netns=self.real.netns,
            mntns=self.mntns,
            cwd=ROOT,
        )
        procs.wait_ready(self.server, self.socket.is_socket, timeout=60, what="cni-server socket")

    def stop_server(self) -> None:
        if self.server is not None:
            procs.stop(self.server)
            self.server = None

    def node(self) -> dict[str, Any]:
        out = self.cluster.kubectl("get", "node", self.real.name, "-o", "json")
        body: dict[str, Any] = json.loads(out.stdout)
        return body

    def ready(self) -> bool | None:
        for condition in self.node()["status"]["conditions"]:
            if condition["type"] == "Ready":
                return {"True": True, "False": False}.get(condition["status"])
        return None

    def not_ready_message(self) -> str | None:
        for condition in self.node()["status"]["conditions"]:
            if condition["type"] == "Ready" and condition["status"] == "False":
                return str(condition.get("message"))
        return None

    def tainted_not_ready(self) -> bool:
        taints = self.node()["spec"].get("taints") or []
        return any(t["key"] == "node.kubernetes.io/not-ready" for t in taints)


@pytest.fixture(scope="module")
def served(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], ServedNode]]:
    subprocess.run(["make", "-C", str(ROOT), "plugins"], check=True, capture_output=True)
    log_dir = tmp_path_factory.mktemp("served")
    made: list[ServedNode] = []

    def make(runtime: str) -> ServedNode:
        real = cluster.add_real_node(cni="none", runtime=runtime)
        record = next(n for n in cluster.state.nodes if n.name == real.name)
        network = f"cw-{secrets.token_hex(3)}"
        node = ServedNode(cluster, real, record.index, Path(record.mntns), network, log_dir)
        made.append(node)
        for shim in ("cniwarden-bridge", "cniwarden-host-local"):
            shutil.copy2(SHIMS / shim, real.cni_bin_dir / shim)
        pod_cidr = ipaddress.IPv4Network(
            cluster.kubectl("get", "node", real.name, "-o", "jsonpath={.spec.podCIDR}").stdout
        )
        conflist = {
            "cniVersion": "1.1.0",
            "name": network,
            "plugins": [
                {
                    "type": "cniwarden-bridge",
                    "bridge": f"cws{network[3:]}",
                    "isGateway": True,
                    "ipam": {
                        "type": "cniwarden-host-local",
                        "ranges": [[{"subnet": str(pod_cidr)}]],
                    },
                }
            ],
        }
        node.start_server()
        (real.cni_conf_dir / f"10-{network}.conflist").write_text(json.dumps(conflist))
        wait_until(node.ready, f"{real.name} ({runtime}) Ready on our network", 120)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.stop_server()


def test_containerd_2_status_turns_the_node_not_ready_and_back(
    served: Callable[[str], ServedNode], cluster: LocalCluster, tmp_path: Path
) -> None:
    node = served("containerd-2")
    probe = RuntimeProbe(node.real.host_root)
    roots = {node.real.name: node.real.host_root}
    with running_fleet(cluster, tmp_path, [node.real.name], roots) as fleet:
        state, _ = wait_until(
            lambda: (s := fleet.node_state(node.real.name)).get("healthy") and s,
            "a healthy report",
            60,
        )
        assert state["runtime"]["name"] == "containerd"
        assert state["runtime"]["version"].startswith("v2.")
        try:
            started = time.monotonic()
            node.stop_server()
            facts, _ = wait_until(
                lambda: (f := probe.facts()).network_ready is False and f,
                "containerd 2 says NetworkReady=false",
                TRANSITION_SECONDS,
            )
            cri_down = time.monotonic() - started
            report, _ = wait_until(
                lambda: (s := fleet.node_state(node.real.name)).get("healthy") is False and s,
                "the node report turns unhealthy",
                TRANSITION_SECONDS,
            )
            reported = time.monotonic() - started
            message, _ = wait_until(node.not_ready_message, "kubelet: NotReady", TRANSITION_SECONDS)
            not_ready = time.monotonic() - started
            wait_until(
                node.tainted_not_ready, "not-ready taint (no scheduling)", TRANSITION_SECONDS
            )
            tainted = time.monotonic() - started
        finally:
            node.start_server()
        restarted = time.monotonic()
        wait_until(
            lambda: probe.facts().network_ready is True,
            "containerd 2 says NetworkReady=true",
            TRANSITION_SECONDS,
        )
        cri_up = time.monotonic() - restarted
        wait_until(node.ready, "kubelet: Ready again", TRANSITION_SECONDS)
        ready = time.monotonic() - restarted
        wait_until(lambda: not node.tainted_not_ready(), "taint gone", TRANSITION_SECONDS)
        untainted = time.monotonic() - restarted
        wait_until(
            lambda: fleet.node_state(node.real.name).get("healthy") is True,
            "the node report healthy again",
            TRANSITION_SECONDS,
        )
    probe.close()
    print(
        f"\ncontainerd {state['runtime']['version']} STATUS, from the cni-server's stop: CRI "
        f"NetworkReady=false {cri_down:.1f} s, CNINodeState unhealthy {reported:.1f} s, Node "
        f"NotReady {not_ready:.1f} s, not-ready taint {tainted:.1f} s; from its restart: "
        f"NetworkReady=true {cri_up:.1f} s, Node Ready {ready:.1f} s, taint gone {untainted:.1f} s"
        f"\ncontainerd said: {facts.network_message}\nkubelet said: {message}"
    )
    assert "NetworkReady=false" in message, message
    assert "cniwarden" in facts.network_message or "50" in facts.network_message, facts
    first = report["problems"][0]
    assert first["code"] == "RuntimeDisagrees", report["problems"]
    assert "our model predicted healthy" in first["message"]


def test_crio_gc_at_start_releases_leases_of_sandboxes_gone_while_it_was_down(
    served: Callable[[str], ServedNode], cluster: LocalCluster
) -> None:
    node = served("crio")
    pod = f"gc-{secrets.token_hex(3)}"
    body = busybox_pod(pod, node.real.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    try:
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s")
        live = {p.name for p in node.leases.iterdir() if p.name[0].isdigit()}
        assert len(live) == 1, live
        record = next(
            p
            for p in cluster.state.processes
            if p.node == node.real.name and p.name == "crio" and procs.is_alive(p)
        )
        procs.stop(record)
        # While CRI-O is down, a sandbox that never got its DEL (the node crashed
        # mid-teardown) still holds a lease; CRI-O will not list it as valid.
        ours = ipaddress.IPv4Address(sorted(live)[0])
        stale = node.leases / str(ours + 7)
        stale.write_bytes(b"deadbeef" * 8 + b"\r\neth0")
        layout = cluster.layout.node(node.index, "crio")
        crio.start_crio(cluster.state, layout)
        _, released = wait_until(
            lambda: not stale.exists(), "the stale lease released by CRI-O's GC", 60
        )
        print(f"\nCRI-O GC at start released the stale lease {released:.1f} s after start")
        # Nothing but a runtime's call reaches the cni-server; only GC names the
        # attachments to keep, and the live pod's is kept.
        assert {p.name for p in node.leases.iterdir() if p.name[0].isdigit()} == live
    finally:
        cluster.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s", check=False)
