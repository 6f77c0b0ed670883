"""Operator rollout benchmark: time from `kubectl apply` of a CNINetwork to every
selected node ready, for N agents (each on its own tmp host root, against kwok
fake nodes of a real local API server), plus the RSS of the controller and of
the agents.

    .venv/bin/python -m bench.operator_rollout --agents 3 --agents 30 [--rounds 3]

Uses the cluster named by CNIWARDEN_CLUSTER (`make cluster-up TIER=fake-nodes`)
or starts a fake-nodes cluster of its own and stops it afterwards. Writes
bench/results/operator_rollout.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.rollout_timeline import Timeline
from bench.trees import extract_tree
from devtools.localcluster import LocalCluster, Tier, attach, up

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("/usr/lib/cni")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def condition_true(status: dict[str, Any], kind: str) -> bool:
    """Whether the CNINetwork status has condition `kind` with status "True"."""
    return any(
        c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or []
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def a_cluster() -> Iterator[LocalCluster]:
    name = os.environ.get("CNIWARDEN_CLUSTER")
    if name:
        yield attach(name)
        return
    cluster = up(f"bench-{os.getpid()}", Tier.FAKE_NODES, fake_nodes=0, owner_pid=os.getpid())
    try:
        yield cluster
    finally:
        cluster.down()


class Processes:
    """The controller and the agents, from this checkout or from `tree` (the product
    code of another revision, see pod_cpu.extract_tree)."""

    def __init__(self, cluster: LocalCluster, workdir: Path, tree: Path | None = None) -> None:
        self.cluster, self.workdir, self.tree = cluster, workdir, tree
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, key: str, *args: str) -> None:
        log = (self.workdir / f"{key}.log").open("ab")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        if self.tree is not None:
            env["PYTHONPATH"] = f"{self.tree / 'operator'}{os.pathsep}{self.tree}"
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "cni_operator.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.tree or ROOT,  # `-m` puts the working directory first on sys.path
            start_new_session=True,
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def kubectl_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def api_metrics(cluster: LocalCluster) -> dict[str, float]:
    """The API server's counters: requests (all verbs but WATCH, which stays open),
    writes to Nodes (kwok's heartbeats, labels), and the Node watch events it sent
    (count and bytes, summed over all watchers); and the writes of the controller's Node
    projection (CNINodeRoutes) and the watch events it sent."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out = {
        "requests": 0.0,
        "node_writes": 0.0,
        "node_watch_events": 0.0,
        "node_watch_bytes": 0.0,
        "routes_writes": 0.0,
        "routes_watch_events": 0.0,
    }
    writes = ('verb="PATCH"', 'verb="UPDATE"', 'verb="APPLY"')
    for line in text.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith("apiserver_request_total{") and 'verb="WATCH"' not in line:
            out["requests"] += float(value)
            if 'resource="nodes"' in line and any(verb in line for verb in writes):
                out["node_writes"] += float(value)
            if 'resource="cninoderoutes"' in line and any(
                verb in line for verb in (*writes, 'verb="POST"')
            ):
                out["routes_writes"] += float(value)
        elif line.startswith("apiserver_watch_events_total{") and 'kind="Node"' in line:
            out["node_watch_events"] += float(value)
        elif line.startswith("apiserver_watch_events_sizes_sum{") and 'kind="Node"' in line:
            out["node_watch_bytes"] += float(value)
        elif line.startswith("apiserver_watch_events_total{") and 'kind="CNINodeRoutes"' in line:
            out["routes_watch_events"] += float(value)
    return out


def api_load(cluster: LocalCluster, seconds: float = 10.0) -> dict[str, float]:
    """Over a steady window: the request rate, the Node writes (kwok heartbeats: every
    write is an update every Node watcher receives) and the Node watch events sent,
    so the fan-out per Node update is events / writes; the CNINodeRoutes writes and
    watch events over the same window (none while no node joins, leaves or changes)."""
    m0 = api_metrics(cluster)
    time.sleep(seconds)
    m1 = api_metrics(cluster)
    delta = {k: m1[k] - m0[k] for k in m0}
    writes = max(delta["node_writes"], 1.0)
    return {
        "requests_per_s": round(delta["requests"] / seconds, 1),
        "node_updates_per_s": round(delta["node_writes"] / seconds, 1),
        "node_watch_events_per_s": round(delta["node_watch_events"] / seconds, 1),
        "node_watch_events_per_update": round(delta["node_watch_events"] / writes, 1),
        "node_watch_kib_per_update": round(delta["node_watch_bytes"] / writes / 1024, 1),
        "routes_writes": delta["routes_writes"],
        "routes_watch_events": delta["routes_watch_events"],
    }


def run_once(
    cluster: LocalCluster,
    agents: int,
    rounds: int,
    reuse: bool = False,
    tree: Path | None = None,
    label_: str = "this tree",
) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    label = f"cniwarden.io/bench={run_id}"
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    if reuse:  # the cluster's kwok Nodes (kwok gets slow to add more past a few hundred)
        listed = kubectl_json(cluster, "get", "nodes")["items"]
        names = sorted((n["metadata"]["name"] for n in listed), key=lambda n: (len(n), n))
        nodes = [n for n in names if "-kwok" in n][:agents]
        if len(nodes) < agents:
            raise RuntimeError(f"--reuse-nodes: only {len(nodes)} kwok Nodes")
    else:
        nodes = cluster.add_fake_nodes(agents)
    cluster.kubectl("label", "node", *nodes, label, "--overwrite")
    workdir = Path(tempfile.mkdtemp(prefix=f"cniwarden-bench-{run_id}-"))
    procs = Processes(cluster, workdir, tree)
    result: dict[str, Any] = {
        "agents": agents,
        "tree": label_,
        "rounds": [],
        "load_start": os.getloadavg()[0],
    }
    stack = contextlib.ExitStack()
    try:
        started = time.monotonic()
        procs.spawn("operator", "operator")
        for node in nodes:
            procs.spawn(
                f"agent-{node}", "agent", "--node-name", node, "--host-root", str(workdir / node)
            )
        # Every agent up: it has published its CNINodeState.
        deadline = time.monotonic() + 1800  # 100 agents start on 2 shared cores
        while time.monotonic() < deadline:
            states = kubectl_json(cluster, "get", "cninodestates")["items"]
            if {s["metadata"]["name"] for s in states} >= set(nodes):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("agents did not all report within 1800s")
        result["agents_up_s"] = round(time.monotonic() - started, 2)
        time.sleep(2)  # let the start-up burst settle before measuring
        result["api"] = api_load(cluster)
        timeline = stack.enter_context(Timeline(cluster.kubeconfig))
        for index in range(rounds):
            name = f"bench-{run_id}-{index}"
            spec = {
                "priority": 10,
                "cniVersion": "1.0.0",
                "nodeSelector": {"cniwarden.io/bench": run_id},
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cwb0",
                        "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
                    }
                ],
                "binaries": [
                    {
                        "name": n,
                        "sha256": sha(REFERENCE / n),
                        "source": {"file": str(REFERENCE / n)},
                    }
                    for n in ("bridge", "host-local")
                ],
            }
            body = {
                "apiVersion": "cniwarden.io/v1alpha1",
                "kind": "CNINetwork",
                "metadata": {"name": name},
                "spec": spec,
            }

            def ready(t: Timeline, name: str = name) -> bool:
                status = t.network_status(name)
                return condition_true(status, "Ready") and status.get("nodesReady") == agents

            t0 = time.monotonic()
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            files_at = None
            while True:
                now = time.monotonic()
                if files_at is None and all(
                    (workdir / n / "etc/cni/net.d" / f"10-{name}.conflist").exists() for n in nodes
                ):
                    files_at = now - t0
                ready_stamp = timeline.wait_for(ready, 0.05)
                if ready_stamp is not None:
                    ready_at = ready_stamp - t0
                    break
                if now - t0 > 300:
                    raise RuntimeError(f"{name} not Ready after 300s: {timeline.errors}")
            # The split: each node's first report at generation 1, and the status writes.
            applied = sorted(
                stamp - t0
                for n in nodes
                if (stamp := timeline.first_applied(n, name, 1)) is not None
            )
            writes = timeline.status_writes(name, t0)
            # A foreign file that wins: time until the network's Shadowed condition says so.
            planted = workdir / nodes[0] / "etc/cni/net.d" / f"00-foreign-{index}.conflist"
            t2 = time.monotonic()
            planted.write_text(
                '{"cniVersion":"1.0.0","name":"foreign","plugins":[{"type":"bridge"}]}'
            )
            stamp = timeline.wait_for(
                lambda t, name=name: condition_true(t.network_status(name), "Shadowed"), 60
            )
            if stamp is None:
                raise RuntimeError("Shadowed not reported within 60s")
            shadowed_at = stamp - t2
            planted.unlink()
            rss = {key: rss_kib(p.pid) for key, p in procs.procs.items()}
            agent_rss = [v for k, v in rss.items() if k.startswith("agent-")]
            result["rounds"].append(
                {
                    "files_on_all_nodes_s": round(files_at or ready_at, 3),
                    "status_ready_s": round(ready_at, 3),
                    # apply → the n-th node's report saying Applied (p50, last)
                    "reports_applied_p50_s": round(statistics.median(applied), 3),
                    "reports_applied_last_s": round(applied[-1], 3),
                    "reports_applied": len(applied),
                    # the controller's status writes until Ready: (s after apply, nodesReady)
                    "status_writes": [(round(t - t0, 3), n) for t, n in writes],
                    "shadowed_s": round(shadowed_at, 3),
                    "operator_rss_mib": round(rss["operator"] / 1024, 1),
                    "agent_rss_mib_mean": round(statistics.mean(agent_rss) / 1024, 1),
                    "agent_rss_mib_max": round(max(agent_rss) / 1024, 1),
                }
            )
            t1 = time.monotonic()
            cluster.kubectl("delete", "cninetwork", name, "--timeout=300s")
            result["rounds"][-1]["delete_clean_s"] = round(time.monotonic() - t1, 3)
    finally:
        stack.close()
        procs.stop()
        for node in nodes:
            cluster.kubectl("delete", "cninodestate", node, "--ignore-not-found", check=False)
        cluster.kubectl("label", "node", *nodes, "cniwarden.io/bench-", check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    rounds_ = result["rounds"]
    for key in (
        "files_on_all_nodes_s",
        "reports_applied_p50_s",
        "reports_applied_last_s",
        "status_ready_s",
        "shadowed_s",
        "delete_clean_s",
    ):
        result[f"{key}_median"] = statistics.median(r[key] for r in rounds_)
    for key in ("operator_rss_mib", "agent_rss_mib_mean", "agent_rss_mib_max"):
        result[key] = max(r[key] for r in rounds_)
    result["load_end"] = os.getloadavg()[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, action="append", help="agent counts (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reuse-nodes", action="store_true", help="the cluster's kwok Nodes")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run the controller and agents of git revision REV, alternating with this "
        "tree's (before, after, before, ...) for each agent count",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per tree and agent count")
    args = parser.parse_args()
    counts = args.agents or [3, 30]
    results = []
    with contextlib.ExitStack() as stack, a_cluster() as cluster:
        trees: list[tuple[str, Path | None]] = [("after" if args.before else "this tree", None)]
        if args.before:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rollout-")))
            trees.insert(0, (f"before ({args.before})", extract_tree(args.before, work / "t")))
        for count in counts:
            for _ in range(args.repeat):
                for label_, tree in trees:
                    print(f"operator_rollout: {count} agents, {label_}...", file=sys.stderr)
                    results.append(
                        run_once(cluster, count, args.rounds, args.reuse_nodes, tree, label_)
                    )
    out = ROOT / "bench/results/operator_rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| agents | tree | apply → files on all nodes | apply → node reports Applied (p50 / last) "
        "| apply → Ready status | foreign file → Shadowed "
        "| delete → clean | agents up | operator RSS | agent RSS mean / max "
        "| API requests/s (steady) | Node updates/s | Node watch events/s "
        "| watch events (KiB) per Node update | CNINodeRoutes writes / watch events | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['agents']} | {r['tree']} | {r['files_on_all_nodes_s_median']:.2f} s "
            f"| {r['reports_applied_p50_s_median']:.2f} "
            f"/ {r['reports_applied_last_s_median']:.2f} s "
            f"| {r['status_ready_s_median']:.2f} s | {r['shadowed_s_median']:.2f} s "
            f"| {r['delete_clean_s_median']:.2f} s "
            f"| {r['agents_up_s']:.0f} s | {r['operator_rss_mib']:.0f} MiB "
            f"| {r['agent_rss_mib_mean']:.0f} / {r['agent_rss_mib_max']:.0f} MiB "
            f"| {r['api']['requests_per_s']} | {r['api']['node_updates_per_s']} "
            f"| {r['api']['node_watch_events_per_s']} | {r['api']['node_watch_events_per_update']} "
            f"({r['api']['node_watch_kib_per_update']}) "
            f"| {r['api']['routes_writes']:.0f} / {r['api']['routes_watch_events']:.0f} "
            f"| {r['load_start']:.0f} -> {r['load_end']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
