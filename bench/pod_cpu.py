"""CPU per pod lifecycle: what cniwarden's processes (agent, cni-server with its reaper,
controller, the shims) spend for each pod's ADD + DEL and everything it triggers (agent
passes or refreshes, CNINodeState patches, the controller's aggregation), against the
work of the reference plugins (bridge + host-local) for the same ADD + DEL.

    sudo .venv/bin/python -m bench.pod_cpu [--before REV] [--pods 20] [--rounds 4]

One fake-nodes local cluster (a real kube-apiserver; the Nodes are kwok's), one
controller, and per compared agent version one node: its Node object, its own host root,
its agent (from this tree, or from git revision REV for `--before`), and its cni-server
as the chart runs it (same options and log level) in a network namespace of its own and
a mount namespace where the host root's var/lib/cni is /var/lib/cni, as on a node. The
bench plays the runtime: it execs the shim the agent installed, from the conflist the
agent wrote, and writes and removes libcni's result cache. The reference plugins run on
sandboxes of their own in another namespace.

Each round: an idle window (every process's idle rate: heartbeats, resyncs), then each
variant in rotated order: `--pods` ADDs then as many DELs, `--pace` seconds apart, until
that node's CNINodeState shows no attachment plus a tail of `--tail` seconds (so the
agent's and the controller's reactions are in the window). A process's CPU in a window,
minus its idle rate times the window, divided by the pods, is its CPU per pod. CPU is
every thread's schedstat plus reaped children; a plugin process's is its own rusage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fastpath.launch import chart_server_args, process_cpu_ms
from bench.operator_rollout import a_cluster, condition_true, kubectl_json
from bench.sandboxes import NETNS_DIR, cni_env
from bench.trees import extract_tree
from devtools.localcluster import LocalCluster
from node_plugin.kernel import netns

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("/usr/lib/cni")
RESULTS = ROOT / "bench" / "results"
# As the chart runs them (values.yaml: resyncSeconds 30, no --verbose: INFO).
AGENT_ARGS = ["-m", "cni_operator.cli", "agent", "--resync-seconds=30"]
SERVER_ARGS = ["-m", "node_plugin.server"]


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class PluginRun:
    code: int
    out: bytes
    err: bytes


def exec_plugin(
    binary: Path, env: dict[str, str], config: dict[str, Any], join: str | None = None
) -> PluginRun:
    """One plugin process (its CPU is counted by `ChildCpu`), optionally started in the
    network namespace `join`, as a runtime on that node would start it."""

    def enter() -> None:
        if join is not None:
            netns.join(join)

    proc = subprocess.Popen(
        [str(binary)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=enter if join else None,  # noqa: PLW1509 (setns only, before exec)
    )
    out, err = proc.communicate(json.dumps(config).encode(), timeout=60)
    return PluginRun(proc.returncode, out, err)


class ChildCpu:
    """CPU of the plugin processes this bench reaps (RUSAGE_CHILDREN delta); the bench
    starts no other child process while one is measured (kubectl runs outside)."""

    @staticmethod
    def now() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (usage.ru_utime + usage.ru_stime) * 1000


@dataclass
class Variant:
    """One way of running pods: an agent version on its node, or the reference plugins."""

    label: str
    sandboxes: list[str]
    add: Callable[[str], None]
    delete: Callable[[str], None]
    settled: Callable[[], bool]
    processes: dict[str, int] = field(default_factory=dict)  # name -> pid (ours only)


class Spawner:
    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.procs: list[subprocess.Popen[bytes]] = []

    def python(self, key: str, tree: Path, argv: list[str], prefix: list[str] = ()) -> int:  # type: ignore[assignment]
        log = (self.work / f"{key}.log").open("ab")
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "PYTHONPATH": f"{tree / 'operator'}{os.pathsep}{tree}",
            "CNIWARDEN_OWN_BIN_DIR": str(ROOT / "build" / "cni-bin"),
        }
        proc = subprocess.Popen(
            [*prefix, sys.executable, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tree,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc.pid

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def network_spec(run_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINetwork",
        "metadata": {"name": f"podcpu-{run_id}"},
        "spec": {
            "priority": 10,
            "cniVersion": "1.0.0",
            "nodeSelector": {"cniwarden.io/bench": run_id},
            "plugins": [
                {
                    "type": "cniwarden-bridge",
                    "bridge": f"cwp{run_id}",
                    "isGateway": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "cniwarden-host-local",
                        "ranges": [[{"subnet": "usePodCIDR"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        },
    }


class CniwardenNode:
    """A node running one agent version: the runtime's side of ADD and DEL."""

    def __init__(self, node: str, root: Path, sock: Path, node_ns: str) -> None:
        self.node, self.root, self.sock = node, root, sock
        self.node_ns = f"{NETNS_DIR}/{node_ns}"  # the shim hands the server its netns
        self.results = root / "var/lib/cni/results"
        self.prev: dict[str, bytes] = {}

    def conflist(self) -> dict[str, Any]:
        conf = self.root / "etc/cni/net.d"
        files = sorted(conf.glob("*.conflist"))
        data: dict[str, Any] = json.loads(files[0].read_bytes())
        return data

    def _run(self, command: str, sandbox: str, prev: bytes | None) -> PluginRun:
        conflist = self.conflist()
        plugin = conflist["plugins"][0]
        config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
        if prev is not None:
            config["prevResult"] = json.loads(prev)
        env = cni_env(command, sandbox, sandbox, "eth0", str(self.root / "opt/cni/bin"))
        env["CNIWARDEN_SOCKET"] = str(self.sock)
        binary = self.root / "opt/cni/bin" / plugin["type"]
        run = exec_plugin(binary, env, config, join=self.node_ns)
        if run.code != 0:
            raise RuntimeError(f"{command} {sandbox} on {self.node}: {run.out!r} {run.err!r}")
        return run

    def cache_file(self, sandbox: str) -> Path:
        return self.results / f"{self.conflist()['name']}-{sandbox}-eth0"

    def add(self, sandbox: str) -> None:
        run = self._run("ADD", sandbox, None)
        self.results.mkdir(parents=True, exist_ok=True)
        cache = {
            "kind": "cniCacheV1",
            "containerId": sandbox,
            "ifName": "eth0",
            "networkName": self.conflist()["name"],
            "result": json.loads(run.out),
        }
        self.cache_file(sandbox).write_text(json.dumps(cache))  # as libcni does after ADD
        self.prev[sandbox] = run.out

    def delete(self, sandbox: str) -> None:
        self._run("DEL", sandbox, self.prev.pop(sandbox, None))
        self.cache_file(sandbox).unlink(missing_ok=True)


class ReferenceNode:
    def __init__(self, run_id: str, work: Path, node_ns: str) -> None:
        self.node_ns = f"{NETNS_DIR}/{node_ns}"
        self.config = {
            "cniVersion": "1.0.0",
            "name": f"cwpr{run_id}",
            "type": "bridge",
            "bridge": f"cwpr{run_id}",
            "isGateway": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "subnet": "10.239.0.0/16",
                "dataDir": str(work / "ref-ipam"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        self.prev: dict[str, bytes] = {}

    def _run(self, command: str, sandbox: str, prev: bytes | None) -> PluginRun:
        config = dict(self.config)
        if prev is not None:
            config["prevResult"] = json.loads(prev)
        env = cni_env(command, sandbox, sandbox, "eth0", str(REFERENCE))
        run = exec_plugin(REFERENCE / "bridge", env, config, join=self.node_ns)
        if run.code != 0:
            raise RuntimeError(f"reference {command} {sandbox}: {run.out!r} {run.err!r}")
        return run

    def add(self, sandbox: str) -> None:
        self.prev[sandbox] = self._run("ADD", sandbox, None).out

    def delete(self, sandbox: str) -> None:
        self._run("DEL", sandbox, self.prev.pop(sandbox, None))


def cpu_of(processes: dict[str, int]) -> dict[str, float]:
    return {name: process_cpu_ms(pid) for name, pid in processes.items()}


@contextlib.contextmanager
def netnses(names: list[str]) -> Iterator[None]:
    made = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
        yield
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", metavar="REV", help="also run the agent of git revision REV")
    parser.add_argument("--pods", type=int, default=20, help="pod lifecycles per window")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.1, help="seconds between CNI calls")
    parser.add_argument("--tail", type=float, default=3.0, help="seconds after settling")
    parser.add_argument("--idle", type=float, default=10.0, help="idle window, seconds")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (network and mount namespaces)")
    subprocess.run(["make", "-s", "plugins"], cwd=ROOT, check=True)
    run_id = secrets.token_hex(2)
    work = Path(tempfile.mkdtemp(prefix="cw-podcpu-", dir="/tmp"))
    trees = {"after": ROOT}
    if args.before:
        trees = {"before": extract_tree(args.before, work / "before-tree"), **trees}
    sandboxes = {
        label: [f"cwp{run_id}{label[0]}{i}" for i in range(args.pods)]
        for label in [*trees, "reference"]
    }
    node_nses = {label: f"cwp{run_id}{label[0]}node" for label in [*trees, "reference"]}
    all_ns = [*node_nses.values(), *(s for group in sandboxes.values() for s in group)]
    out: dict[str, Any] = {"args": vars(args), "load_start": loadavg(), "rounds": []}
    with a_cluster() as cluster, netnses(all_ns):
        spawner = Spawner(cluster, work)
        label_ = f"cniwarden.io/bench={run_id}"
        name = network_spec(run_id)["metadata"]["name"]
        try:
            cluster.kubectl("apply", "-f", str(ROOT / "crds"))
            nodes = dict(zip(trees, cluster.add_fake_nodes(len(trees)), strict=True))
            cluster.kubectl("label", "node", *nodes.values(), label_, "--overwrite")
            controller = spawner.python("controller", ROOT, ["-m", "cni_operator.cli", "operator"])
            variants: list[Variant] = []
            for label, tree in trees.items():
                node = nodes[label]
                root = work / label
                (root / "var/lib/cni").mkdir(parents=True)
                agent = spawner.python(
                    f"agent-{label}",
                    tree,
                    [*AGENT_ARGS, "--node-name", node, "--host-root", str(root)],
                )
                sock, queue, chart = (
                    work / f"{label}.sock",
                    work / f"{label}-q",
                    chart_server_args(),
                )
                mount = (
                    "mount -t tmpfs none /var/lib && mkdir /var/lib/cni && "
                    f'mount --bind {root}/var/lib/cni /var/lib/cni && exec "$@"'
                )
                server = spawner.python(
                    f"server-{label}",
                    ROOT,
                    [*SERVER_ARGS, "--socket", str(sock), "--del-queue", str(queue), *chart],
                    prefix=["ip", "netns", "exec", node_nses[label], "sh", "-c", mount, "sh"],
                )
                runtime = CniwardenNode(node, root, sock, node_nses[label])

                def settled(node: str = node) -> bool:
                    state = kubectl_json(cluster, "get", "cninodestate", node)
                    counts = [
                        a.get("count", 0) for a in state.get("status", {}).get("attachments") or []
                    ]
                    return not any(counts)

                variants.append(
                    Variant(
                        label,
                        sandboxes[label],
                        runtime.add,
                        runtime.delete,
                        settled,
                        {"agent": agent, "cni-server": server, "controller": controller},
                    )
                )
            reference = ReferenceNode(run_id, work, node_nses["reference"])
            variants.append(
                Variant(
                    "reference",
                    sandboxes["reference"],
                    reference.add,
                    reference.delete,
                    lambda: True,
                )
            )
            cluster.kubectl("apply", "-f", "-", input=json.dumps(network_spec(run_id)))
            deadline = time.monotonic() + 300
            while True:
                status = kubectl_json(cluster, "get", "cninetwork", name).get("status") or {}
                if condition_true(status, "Ready") and status.get("nodesReady") == len(trees):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not Ready: {status}")
                time.sleep(0.2)
            for variant in variants:  # warm-up: the bridge, the server's first request
                variant.add(variant.sandboxes[0])
                variant.delete(variant.sandboxes[0])
            time.sleep(args.tail)
            ours = {f"{v.label}/{k}": pid for v in variants for k, pid in v.processes.items()}
            ours = {k: v for k, v in ours.items() if not k.endswith("/controller")}
            ours["controller"] = controller
            for index in range(args.rounds):
                record: dict[str, Any] = {"load": loadavg(), "windows": {}}
                before = cpu_of(ours)
                t0 = time.monotonic()
                time.sleep(args.idle)
                idle_s = time.monotonic() - t0
                after = cpu_of(ours)
                idle_rate = {k: (after[k] - before[k]) / idle_s for k in ours}
                record["idle_ms_per_s"] = {k: round(v, 3) for k, v in idle_rate.items()}
                order = variants[index % len(variants) :] + variants[: index % len(variants)]
                for variant in order:
                    procs = dict(variant.processes)
                    cpu0, child0, t0 = cpu_of(procs), ChildCpu.now(), time.monotonic()
                    for sandbox in variant.sandboxes:
                        variant.add(sandbox)
                        time.sleep(args.pace)
                    for sandbox in variant.sandboxes:
                        variant.delete(sandbox)
                        time.sleep(args.pace)
                    plugin_ms = ChildCpu.now() - child0
                    settle_deadline = time.monotonic() + 120
                    while not variant.settled():
                        if time.monotonic() > settle_deadline:
                            raise RuntimeError(f"{variant.label} did not settle")
                        time.sleep(0.2)
                    time.sleep(args.tail)
                    window = time.monotonic() - t0
                    cpu1 = cpu_of(procs)
                    per_pod = {
                        k: (cpu1[k] - cpu0[k] - idle_rate[ours_key(variant.label, k)] * window)
                        / len(variant.sandboxes)
                        for k in procs
                    }
                    per_pod["plugin processes"] = plugin_ms / len(variant.sandboxes)
                    record["windows"][variant.label] = {
                        "window_s": round(window, 2),
                        "ms_per_pod": {k: round(v, 2) for k, v in per_pod.items()},
                    }
                    print(
                        f"round {index} {variant.label}: {record['windows'][variant.label]}",
                        file=sys.stderr,
                    )
                out["rounds"].append(record)
        finally:
            spawner.stop()
            cluster.kubectl(
                "delete", "cninetwork", name, "--ignore-not-found", "--wait=false", check=False
            )
            for node in locals().get("nodes", {}).values():
                cluster.kubectl("delete", "cninodestate", node, "--ignore-not-found", check=False)
                cluster.kubectl("delete", "node", node, "--ignore-not-found", check=False)
            shutil.rmtree(work, ignore_errors=True)
    out["load_end"] = loadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pod_cpu.json").write_text(json.dumps(out, indent=2) + "\n")
    print(report(out))
    return 0


def ours_key(label: str, process: str) -> str:
    return "controller" if process == "controller" else f"{label}/{process}"


def report(out: dict[str, Any]) -> str:
    labels = list(out["rounds"][0]["windows"])
    parts = sorted(
        {k for r in out["rounds"] for w in r["windows"].values() for k in w["ms_per_pod"]}
    )
    med: dict[str, dict[str, float]] = {
        label: {
            part: statistics.median(
                r["windows"][label]["ms_per_pod"].get(part, 0.0) for r in out["rounds"]
            )
            for part in parts
        }
        for label in labels
    }
    ref = med["reference"]["plugin processes"] if "reference" in med else None
    lines = [
        f"CPU ms per pod lifecycle (ADD + DEL), median of {len(out['rounds'])} rounds; "
        f"load average {out['load_start']:.1f} -> {out['load_end']:.1f}",
        "",
        "| | " + " | ".join(parts) + " | all cniwarden | / reference plugins |",
        "|---|" + "---|" * (len(parts) + 2),
    ]
    for label in labels:
        total = sum(med[label].values())
        ratio = f"{total / ref:.2f}x" if ref and label != "reference" else ""
        cells = " | ".join(f"{med[label][p]:.2f}" for p in parts)
        lines.append(
            f"| {label} | {cells} | {'' if label == 'reference' else f'{total:.2f}'} | {ratio} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
