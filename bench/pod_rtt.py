"""Pod-to-pod round-trip time: cniwarden vs the reference bridge plugin, same topology.

One local cluster with four real nodes (bench/refcluster.py): nodes 0 and 1 run
the reference plugins (containernetworking-plugins' bridge + host-local over each
node's podCIDR, host-gw routes added by hand), nodes 2 and 3 run cniwarden as
`helm install` sets it up (the example CNINetwork through the shim and the
cni-server, routes from the agents' host-gw).

On each side three busybox pods: a1 and a2 on the first node, b on the second.
From a1's network namespace we measure, to a2 (same node) and to b (across
nodes): ICMP echo (`ping`, per-reply times) and a TCP request/response of one
byte on an open connection (netperf's TCP_RR shape), each sample timed with
`perf_counter_ns`. Rounds alternate between the two sides so that noise on the
shared machine hits both alike. Prints p50/p99 per side and the ratios
cniwarden / reference (below 1.0 = faster), and writes bench/results/pod_rtt.json.

Root only; sends traffic only between the cluster's own namespaces.
    python -m bench.pod_rtt [--samples 1000] [--rounds 5]   (or: make bench-rtt)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.refcluster import two_pairs
from bench.stats import percentile
from devtools.localcluster import LocalCluster
from devtools.localcluster.pods import busybox_pod
from devtools.ship.install import LocalNode, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PORT = 5201

ECHO_SERVER = f"""
import socket
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", {PORT}))
srv.listen(8)
while True:
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(1)
        if not data:
            break
        conn.sendall(data)
    conn.close()
"""

RR_CLIENT = f"""
import json, socket, sys, time
host, n = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, {PORT}), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for _ in range(50):  # warm-up: ARP, caches
    s.sendall(b"x"); s.recv(1)
out = []
for _ in range(n):
    t0 = time.perf_counter_ns()
    s.sendall(b"x")
    if not s.recv(1):
        raise SystemExit("connection closed")
    out.append((time.perf_counter_ns() - t0) / 1000.0)
print(json.dumps(out))
"""


def log(text: str) -> None:
    print(f"pod_rtt: {text}", file=sys.stderr, flush=True)


@dataclass
class Side:
    name: str
    nodes: list[LocalNode]
    pods: dict[str, str] = field(default_factory=dict)  # pod -> IP
    netns: dict[str, Path] = field(default_factory=dict)  # pod -> /proc/<pid>/ns/net
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)


def pod_body(name: str, node: str) -> dict[str, Any]:
    return busybox_pod(name, node, ["sleep", "3600"], labels={"bench": "pod-rtt"}, grace_seconds=0)


def pod_netns(uid: str, node: LocalNode) -> Path:
    """The network namespace of a pod: a process in its cgroup whose netns is not the node's."""
    node_ns = (node.netns).stat().st_ino
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"pod{uid}" not in (proc / "cgroup").read_text():
                continue
            ns = proc / "ns" / "net"
            if ns.stat().st_ino != node_ns:
                return ns
        except OSError:
            continue
    raise RuntimeError(f"no process of pod {uid} found")


def start_pods(cluster: LocalCluster, side: Side) -> None:
    first, second = side.nodes
    placement = {f"{side.name}-a1": first, f"{side.name}-a2": first, f"{side.name}-b": second}
    for name, node in placement.items():
        cluster.kubectl("apply", "-f", "-", input=json.dumps(pod_body(name, node.name)))
    cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        *[f"pod/{n}" for n in placement],
        "--timeout=180s",
        timeout=200,
    )
    for name, node in placement.items():
        pod = json.loads(cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        side.pods[name] = pod["status"]["podIP"]
        side.netns[name] = pod_netns(pod["metadata"]["uid"], node)
    for server in (f"{side.name}-a2", f"{side.name}-b"):
        side.servers.append(
            subprocess.Popen(
                ["nsenter", f"--net={side.netns[server]}", sys.executable, "-c", ECHO_SERVER],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    time.sleep(0.5)


def ping(netns: Path, target: str, samples: int) -> list[float]:
    out = run(
        [
            "nsenter",
            f"--net={netns}",
            "ping",
            "-n",
            "-c",
            str(samples + 20),
            "-i",
            "0.002",
            "-W",
            "1",
            target,
        ],
        timeout=600,
    ).stdout
    times = [
        float(line.split("time=")[1].split()[0]) * 1000.0
        for line in out.splitlines()
        if "time=" in line
    ]
    return times[20:]  # the first replies pay for ARP and cold caches


def tcp_rr(netns: Path, target: str, samples: int) -> list[float]:
    out = run(
        ["nsenter", f"--net={netns}", sys.executable, "-c", RR_CLIENT, target, str(samples)],
        timeout=600,
    ).stdout
    values: list[float] = json.loads(out)
    return values


def measure(side: Side, samples: int) -> None:
    client = side.netns[f"{side.name}-a1"]
    for pair, peer in (("same-node", f"{side.name}-a2"), ("cross-node", f"{side.name}-b")):
        ip = side.pods[peer]
        side.samples.setdefault(f"ping {pair}", []).extend(ping(client, ip, samples))
        side.samples.setdefault(f"tcp_rr {pair}", []).extend(tcp_rr(client, ip, samples))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1000, help="per test and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--swap", action="store_true", help="reference on nodes 2-3, cniwarden on nodes 0-1"
    )
    args = parser.parse_args(argv)
    with two_pairs("rtt", log, swap=args.swap) as bed:
        reference = Side("ref", bed.reference)
        ours = Side("cw", bed.cniwarden)
        try:
            for side in (reference, ours):
                start_pods(bed.cluster, side)
                log(f"{side.name}: pods {side.pods}")
            for round_ in range(args.rounds):
                for side in (reference, ours) if round_ % 2 == 0 else (ours, reference):
                    measure(side, args.samples)
                log(f"round {round_ + 1}/{args.rounds} done")
            report = summarize(reference, ours, args)
            print_report(report)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "pod_rtt.json").write_text(json.dumps(report, indent=2) + "\n")
        finally:
            for server in [*reference.servers, *ours.servers]:
                server.terminate()
                server.wait(timeout=10)
            bed.cluster.kubectl(
                "delete", "pods", "-l", "bench=pod-rtt", "--wait=true", "--timeout=60s", check=False
            )
    return 0


def summarize(reference: Side, ours: Side, args: argparse.Namespace) -> dict[str, Any]:
    tests: dict[str, Any] = {}
    for key in reference.samples:
        ref, cw = reference.samples[key], ours.samples[key]
        row: dict[str, Any] = {
            "reference_p50_us": round(percentile(ref, 0.5), 1),
            "reference_p99_us": round(percentile(ref, 0.99), 1),
            "cniwarden_p50_us": round(percentile(cw, 0.5), 1),
            "cniwarden_p99_us": round(percentile(cw, 0.99), 1),
            "samples": [len(ref), len(cw)],
        }
        row["ratio_p50"] = round(row["cniwarden_p50_us"] / row["reference_p50_us"], 2)
        row["ratio_p99"] = round(row["cniwarden_p99_us"] / row["reference_p99_us"], 2)
        row["reference_mean_us"] = round(statistics.fmean(ref), 1)
        row["cniwarden_mean_us"] = round(statistics.fmean(cw), 1)
        tests[key] = row
    return {
        "samples_per_round": args.samples,
        "rounds": args.rounds,
        "reference_nodes": [n.name for n in reference.nodes],
        "cniwarden_nodes": [n.name for n in ours.nodes],
        "tests": tests,
    }


def print_report(report: dict[str, Any]) -> None:
    columns = ("reference p50/p99 µs", "cniwarden p50/p99 µs")
    print(f"{'test':<22}{columns[0]:>24}{columns[1]:>24}{'ratio p50':>11}{'ratio p99':>11}")
    for key, row in report["tests"].items():
        ref = f"{row['reference_p50_us']:.1f} / {row['reference_p99_us']:.1f}"
        cw = f"{row['cniwarden_p50_us']:.1f} / {row['cniwarden_p99_us']:.1f}"
        print(f"{key:<22}{ref:>24}{cw:>24}{row['ratio_p50']:>11.2f}{row['ratio_p99']:>11.2f}")


if __name__ == "__main__":
    sys.exit(main())
