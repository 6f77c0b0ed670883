"""End to end: a CNIMigration moves three real nodes from the local cluster's
reference `bridge` + `host-local` conflist (`10-localcluster.conflist`, over each
node's pod CIDR) to a cniwarden network, under a continuous client, and back.

Real parts only: three real nodes per test (containerd + runc + kubelet + kube-proxy,
each in its own network namespace), the controller (`cniwarden operator --migrations`)
and one agent per node as processes, the agent inside its node's network namespace
(its host-gw routes land there). A Deployment of 6 busybox httpd pods (PDB
minAvailable 4) runs on the three nodes, behind a Service; a hostNetwork client pod
on the third node (never evicted: it uses no pod network) sends HTTP requests to the
Service's ClusterIP (kube-proxy, iptables mode, picks a ready pod) at >= 50
requests/s the whole time. Scenarios: a migration then a requested rollback of every
node; a target whose chained plugin is missing on the second node (that node rolled
back, the migration halted, a resume after the fix); the controller and an agent
killed mid-migration. Printed: requests sent and failed, total time and time per
node; asserted: the steps, the files and routes restored byte for byte, the rate held
and failures under 1 %.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devtools.localcluster import LocalCluster
from devtools.localcluster.layout import BUSYBOX_IMAGE, POD_CIDR
from devtools.localcluster.pods import busybox_pod

pytestmark = [pytest.mark.slow, pytest.mark.cluster("real-node"), pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
SWITCH_LABEL = "cniwarden.io/cni"
REFERENCE = Path("/usr/lib/cni")
RATE_PAUSE_US = 12000  # the client's pause between requests: ~60/s with wget's own time


def wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Processes:
    """The controller and agents of this test, stopped at the end whatever happens."""

    def __init__(self, cluster: LocalCluster, logs: Path) -> None:
        self.cluster, self.logs = cluster, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.by_name: dict[str, tuple[list[str], Path | None, subprocess.Popen[bytes]]] = {}

    def spawn(self, name: str, args: list[str], netns: Path | None = None) -> None:
        prefix = ["nsenter", f"--net={netns}"] if netns else []
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "cni_operator.cli", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
                cwd=ROOT,
                start_new_session=True,
            )
        self.procs.append(proc)
        self.by_name[name] = (args, netns, proc)

    def kill_and_restart(self, name: str) -> None:
        """SIGKILL one process (no cleanup of its own), then start it again."""
        args, netns, proc = self.by_name[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.spawn(name, args, netns)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-20:])
            for p in sorted(self.logs.glob("*.log"))
        )


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def workload(namespace: str, run: str) -> list[dict[str, Any]]:
    labels = {"app": f"web-{run}"}
    serve = "mkdir -p /w && echo ok > /w/index.html && exec httpd -f -p 8080 -h /w"
    container = {
        "name": "web",
        "image": BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", serve],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        # Serve on while the endpoint is withdrawn (the usual zero-downtime stop).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "3"]}}},
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "mig-e2e", "operator": "In", "values": [run]}]}
                ]
            }
        }
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 6,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "affinity": affinity,
                        "terminationGracePeriodSeconds": 6,
                        "containers": [container],
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"minAvailable": 4, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
        },
    ]


def client_script(service: str) -> str:
    """HTTP GETs to the Service's ClusterIP (kube-proxy on the client's node picks a
    ready pod); a `count SENT FAILED` line every 50 requests, a `fail` line per failure.
    With busybox `nc`: the static busybox `wget` segfaults here."""
    address = str(ipaddress.ip_address(service))
    return (
        "s=0; f=0\n"
        "while :; do\n"
        f"  r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {address} 8080 2>&1)\n"
        '  case "$r" in *"200 OK"*) ;; *) f=$((f+1)); echo "fail $r";; esac\n'
        "  s=$((s+1))\n"
        '  [ $((s % 50)) = 0 ] && echo "count $s $f"\n'
        f"  usleep {RATE_PAUSE_US}\n"
        "done\n"
    )


def counts(cluster: LocalCluster, namespace: str) -> tuple[int, int]:
    log = cluster.kubectl("logs", "-n", namespace, "client").stdout
    found = re.findall(r"^count (\d+) (\d+)$", log, re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def routes_of(node: Any) -> list[str]:
    """The node's gateway routes as `ip -d route` shows them (gateway, link, proto);
    connected routes are left out (their `linkdown` follows the bridge's ports)."""
    out = subprocess.run(
        ["nsenter", f"--net={node.netns}", "ip", "-d", "route", "show", "table", "main"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return sorted(line for line in out.stdout.splitlines() if " via " in line)


@dataclass
class Run:
    """One migration scenario on its own three real nodes, all on the reference
    network: `a` and `b` (migrated, in that order: waves by label) run the Deployment,
    `c` (never migrated) the client. Everything is removed at the end."""

    cluster: LocalCluster
    processes: Processes
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.namespace = self.mig = f"mig-{self.run_id}"
        self.to = f"cw-{self.run_id}"

    def start(self, chained: str | None = None) -> None:
        """Nodes, agents, controller, the target network (with a `chained` plugin type
        after the bridge, if given), the workload and the client; returns once the
        client has 100 requests answered on the reference network."""
        cluster = self.cluster
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/cnimigrations.cniwarden.io")
        self.a, self.b, self.c = (cluster.add_real_node(cni="bridge") for _ in range(3))
        self.nodes = (self.a, self.b, self.c)
        self.old = {
            n.name: (n.cni_conf_dir / "10-localcluster.conflist").read_bytes() for n in self.nodes
        }
        self.reference_routes = {n.name: routes_of(n) for n in self.nodes}
        for wave, node in enumerate(self.nodes, 1):
            cluster.kubectl(
                "label", "node", node.name, f"mig-e2e={self.run_id}", f"mig-wave={wave}"
            )
        cluster.kubectl("create", "namespace", self.namespace)
        for node in self.nodes:
            self.processes.spawn(
                f"agent-{node.name}",
                ["agent", "--node-name", node.name, "--host-root", str(node.host_root)],
                netns=node.netns,
            )
        self.processes.spawn("controller", ["operator", "--migrations"])
        plugins: list[dict[str, Any]] = [
            {
                "type": "cniwarden-bridge",
                "bridge": "cni0",
                "isGateway": True,
                "isDefaultGateway": True,
                "ipam": {"type": "cniwarden-host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ]
        if chained is not None:
            plugins.append({"type": chained})
        network = {
            "apiVersion": "cniwarden.io/v1alpha1",
            "kind": "CNINetwork",
            "metadata": {"name": self.to},
            "spec": {
                "priority": 20,
                "cniVersion": "1.0.0",
                "shadowPolicy": "Quarantine",
                "nodeSelector": {SWITCH_LABEL: self.to},
                "routing": {"mode": "HostGateway", "clusterCIDRs": [POD_CIDR]},
                "plugins": plugins,
            },
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(network))
        items = workload(self.namespace, self.run_id)
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"kind": "List", "apiVersion": "v1", "items": items}),
        )
        cluster.kubectl(
            "rollout", "status", "-n", self.namespace, "deployment/web", "--timeout=120s"
        )
        service = cluster.kubectl(
            "get", "service", "web", "-n", self.namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout.strip()
        client = busybox_pod(
            "client", self.c.name, ["sh", "-c", client_script(service)], host_network=True
        )
        client["metadata"]["namespace"] = self.namespace
        cluster.kubectl("apply", "-f", "-", input=json.dumps(client))
        cluster.kubectl(
            "wait", "-n", self.namespace, "--for=condition=Ready", "pod/client", "--timeout=120s"
        )
        wait(lambda: self.counts()[0] >= 100, "the client's first 100 requests", 60)
        before = self.counts()
        if before[1]:
            log = cluster.kubectl("logs", "-n", self.namespace, "client").stdout
            probe = cluster.kubectl(
                "exec", "-n", self.namespace, "client", "--", "sh", "-c",
                f"ip route; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {service} 8080 2>&1",
                check=False,
            )  # fmt: skip
            raise AssertionError(
                f"requests failed before the migration: {before}\n{log[-1500:]}\n"
                f"{probe.stdout}{probe.stderr}"
            )

    def counts(self) -> tuple[int, int]:
        return counts(self.cluster, self.namespace)

    def migrate(self, drain_seconds: int = 120) -> None:
        body = {
            "apiVersion": "cniwarden.io/v1alpha1",
            "kind": "CNIMigration",
            "metadata": {"name": self.mig},
            "spec": {
                "from": {"networkName": "localcluster"},
                "to": {"cniNetwork": self.to},
                "nodeSelector": {"mig-e2e": self.run_id},
                "waves": {"byLabel": "mig-wave", "order": ["1", "2", "3"]},
                "drain": {"timeoutSeconds": drain_seconds},
                "verify": {"probeImage": BUSYBOX_IMAGE},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def patch(self, spec: dict[str, Any]) -> None:
        self.cluster.kubectl(
            "patch", "cnimigration", self.mig, "--type", "merge", "-p", json.dumps({"spec": spec})
        )

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = (
            kubectl_json(self.cluster, "get", "cnimigration", self.mig).get("status") or {}
        )
        return found

    def until(
        self,
        phase: str,
        settled: Callable[[dict[str, Any]], bool] = lambda _: True,
        passing: tuple[str, ...] = (),
        timeout: float = 300,
    ) -> dict[str, Any]:
        """The status once in `phase` and `settled`; another final phase fails with the
        logs, except those `passing` (the one a resume just left)."""

        def reached() -> dict[str, Any] | None:
            status = self.status()
            now = status.get("phase")
            final = ("Halted", "Refused", "Succeeded", "RolledBack")
            if now != phase and now in final and now not in passing:
                raise AssertionError(f"migration {now}, not {phase}: {status}")
            return status if now == phase and settled(status) else None

        try:
            found: dict[str, Any] = wait(reached, f"the migration {phase}", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.processes.tails()}") from None
        return found

    def failures_since(self, failed_before: int) -> list[str]:
        """What the client got instead of an answer, after its first `failed_before` failures."""
        log = self.cluster.kubectl("logs", "-n", self.namespace, "client").stdout
        return re.findall(r"^fail (.*)$", log, re.M)[failed_before:]

    def close(self) -> None:
        cluster = self.cluster
        cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "cnimigration", self.mig, "--ignore-not-found", check=False)
        # The agents (stopped after this) remove the new file and restore the old one.
        cluster.kubectl(
            "delete", "cninetwork", self.to, "--ignore-not-found", "--timeout=90s", check=False
        )


@pytest.fixture
def run(cluster: LocalCluster, tmp_path: Path) -> Iterator[Run]:
    procs = Processes(cluster, tmp_path)
    scenario = Run(cluster, procs)
    try:
        yield scenario
    finally:
        try:
            scenario.close()
        finally:
            procs.stop()


def seconds_per_node(status: dict[str, Any]) -> dict[str, float]:
    out = {}
    for record in status["nodes"]:
        times = [t for t in record["timeline"] if t.get("finishedAt")]
        first = calendar.timegm(time.strptime(times[0]["startedAt"], "%Y-%m-%dT%H:%M:%SZ"))
        last = calendar.timegm(time.strptime(times[-1]["finishedAt"], "%Y-%m-%dT%H:%M:%SZ"))
        out[record["name"]] = float(last - first)
    return out


def test_three_real_nodes_migrate_and_roll_back_under_a_continuous_client(run: Run) -> None:
    run.start()
    started = time.monotonic()
    sent_at_start, _ = run.counts()
    run.migrate()
    status = run.until("Succeeded")
    total = time.monotonic() - started
    sent, failed = run.counts()
    sent -= sent_at_start
    for record in status["nodes"]:
        times = record["timeline"]
        assert [t["step"] for t in times] == ["Cordon", "Evict", "Switch", "Verify", "Uncordon"]
        assert all(t["result"] in ("Succeeded", "AlreadyDone") for t in times), times
    per_node = seconds_per_node(status)
    print(
        f"\nmigration of 3 real nodes: {total:.1f} s total, per node "
        f"{', '.join(f'{n}: {s:.0f} s' for n, s in per_node.items())}; client requests "
        f"sent {sent}, failed {failed} ({sent / total:.0f}/s)"
    )
    events = kubectl_json(
        run.cluster,
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        f"involvedObject.name={run.mig},reason=Probe",
    )["items"]
    probed = sorted(e["message"] for e in events)
    assert len(probed) == 3, probed  # one passing probe per node
    assert any("MigratedNode" in m for m in probed), probed  # the second node's
    assert all("DefaultRoute" in m for m in probed), probed
    assert sent / total >= 50, f"the client sent only {sent / total:.1f} requests/s"
    assert failed <= sent / 100, f"{failed} of {sent} requests failed"
    for node in run.nodes:
        assert not (node.cni_conf_dir / "10-localcluster.conflist").exists()
        assert (node.cni_conf_dir / f"20-{run.to}.conflist").exists()

    # Roll all back on request, the client still sending (the last migrated node
    # first): the reference files come back byte for byte, and so do the routes the
    # agent's host-gw had overwritten (the local cluster's static routes to the other
    # nodes' pod CIDRs).
    sent_at_rollback, failed_at_rollback = run.counts()
    started = time.monotonic()
    run.patch({"rollback": True})
    run.until("RolledBack", passing=("Succeeded",))
    total = time.monotonic() - started
    sent, failed = run.counts()
    sent, failed = sent - sent_at_rollback, failed - failed_at_rollback
    failures = run.failures_since(failed_at_rollback)
    print(
        f"rollback of 3 real nodes: {total:.1f} s; client requests sent {sent}, "
        f"failed {failed} ({sent / total:.0f}/s){'; first failures: ' if failures else ''}"
        f"{failures[:3] if failures else ''}"
    )
    for node in run.nodes:
        assert (node.cni_conf_dir / "10-localcluster.conflist").read_bytes() == run.old[node.name]
        assert not (node.cni_conf_dir / f"20-{run.to}.conflist").exists()
        assert routes_of(node) == run.reference_routes[node.name], node.name
    assert sent / total >= 50, f"the client sent only {sent / total:.1f} requests/s"
    assert failed <= sent / 100, f"{failed} of {sent} requests failed during the rollback"


def test_a_node_missing_a_binary_is_rolled_back_and_a_resume_finishes(run: Run) -> None:
    """The target chains a plugin installed on every node but the second: the first
    node migrates, the second's switch never happens (its agent will not write a
    config whose binary is missing), so it is rolled back with its old file byte for
    byte and the migration halts before the third; the pods never lose their network
    (the client keeps getting answers). The binary installed, a resume migrates the
    second and third nodes."""
    chained = f"e2e-tune-{run.run_id}"
    run.start(chained=chained)
    a, b, c = run.nodes
    for node in (a, c):
        shutil.copy2(REFERENCE / "tuning", node.host_root / "opt/cni/bin" / chained)
    sent_at_start, failed_at_start = run.counts()
    started = time.monotonic()
    run.migrate(drain_seconds=40)

    def step_of(status: dict[str, Any], node: str) -> str:
        return str(next(r["step"] for r in status["nodes"] if r["name"] == node))

    # Halted once the switch fails; the node's rollback then runs to its end.
    halted = run.until("Halted", lambda st: step_of(st, b.name) == "RolledBack")
    took = time.monotonic() - started
    records = {r["name"]: r for r in halted["nodes"]}
    assert records[a.name]["step"] == "Done", records[a.name]
    assert records[b.name]["step"] == "RolledBack", records[b.name]
    assert records[c.name]["step"] == "Pending", records[c.name]
    assert halted["halt"]["node"] == b.name and halted["halt"]["step"] == "Switch", halted["halt"]
    assert chained in halted["halt"]["cause"], "the cause names the missing binary"
    assert (b.cni_conf_dir / "10-localcluster.conflist").read_bytes() == run.old[b.name]
    assert not (b.cni_conf_dir / f"20-{run.to}.conflist").exists()
    assert routes_of(b) == run.reference_routes[b.name]
    sent, failed = run.counts()
    print(
        f"\nmigration halted at {b.name} after {took:.1f} s ({halted['halt']['cause']}); "
        f"client requests sent {sent - sent_at_start}, failed {failed - failed_at_start}"
    )

    shutil.copy2(REFERENCE / "tuning", b.host_root / "opt/cni/bin" / chained)
    run.patch({"resume": 1})
    done = run.until("Succeeded", passing=("Halted",))
    took = time.monotonic() - started
    records = {r["name"]: r for r in done["nodes"]}
    assert [records[n.name]["step"] for n in run.nodes] == ["Done"] * 3, records
    assert all((n.cni_conf_dir / f"20-{run.to}.conflist").exists() for n in run.nodes)
    sent, failed = run.counts()
    sent, failed = sent - sent_at_start, failed - failed_at_start
    print(
        f"resumed: all 3 nodes Done {took:.1f} s after the start; client requests sent "
        f"{sent}, failed {failed} ({sent / took:.0f}/s)"
    )
    assert failed <= sent / 100, f"{failed} of {sent} requests failed"


def test_the_controller_and_an_agent_killed_mid_migration_change_nothing(run: Run) -> None:
    """SIGKILL the controller while the first node drains, then the second node's
    agent once its switch has begun; each is started again at once. The migration
    resumes at the step it was in: every node goes through each step once (never
    switched twice), on its first attempt, and the client loses nothing."""
    run.start()
    a, b = run.a, run.b
    sent_at_start, failed_at_start = run.counts()
    started = time.monotonic()
    run.migrate()

    def step_of(node: str) -> str:
        return str(
            next((r["step"] for r in run.status().get("nodes") or [] if r["name"] == node), "")
        )

    def when(node: str, steps: tuple[str, ...], what: str) -> str:
        deadline = time.monotonic() + 240
        while (step := step_of(node)) not in steps:
            assert time.monotonic() < deadline, f"timed out waiting for {what} (step {step!r})"
            assert run.status().get("phase") not in ("Halted", "Refused"), run.status()
            time.sleep(0.2)
        return step

    killed_controller_at = when(a.name, ("Evict",), f"{a.name} to drain")
    run.processes.kill_and_restart("controller")
    killed_agent_at = when(b.name, ("Switch", "Verify"), f"{b.name}'s switch")
    run.processes.kill_and_restart(f"agent-{b.name}")
    status = run.until("Succeeded")
    took = time.monotonic() - started
    for record in status["nodes"]:
        steps = [t["step"] for t in record["timeline"]]
        assert steps == ["Cordon", "Evict", "Switch", "Verify", "Uncordon"], (record["name"], steps)
        assert record["attempt"] == 1, record
    for node in run.nodes:
        assert (node.cni_conf_dir / f"20-{run.to}.conflist").exists()
        assert not (node.cni_conf_dir / "10-localcluster.conflist").exists()
    sent, failed = run.counts()
    sent, failed = sent - sent_at_start, failed - failed_at_start
    print(
        f"\nmigration with the controller killed in {a.name}'s {killed_controller_at} and "
        f"{b.name}'s agent in its {killed_agent_at}: {took:.1f} s; client requests sent "
        f"{sent}, failed {failed} ({sent / took:.0f}/s)"
    )
    assert failed <= sent / 100, f"{failed} of {sent} requests failed"
