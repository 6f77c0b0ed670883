"""Pod churn on real nodes: cniwarden vs the reference bridge + host-local, one cluster.

The Kubernetes pod start-up SLO (p99 <= 5 s from creation to running, images
pre-pulled) is what a CNI's user sees first; a fast ADD alone does not promise it.

One local cluster with four real nodes (bench/refcluster.py, as bench/pod_rtt.py):
nodes 0-1 on the reference plugins (bridge + host-local over each node's podCIDR),
nodes 2-3 on cniwarden as `helm install` sets it up (shim + cni-server). So the two
sides are two different node pairs of one cluster, with podCIDRs of the same size,
the same runtime (containerd) and the busybox image pre-loaded on every node; their
agents and controller run on the cniwarden pair, as they would in a cluster.

A cycle on one side: `--pods` busybox pods created at once (half on each node of the
pair, bound with nodeName), all Running, then all deleted, all gone. A round is one
cycle per side; rounds alternate which side goes first (ref, cw | cw, ref | ...), so
noise on the shared machine hits both alike. Measured, per pod, on one monotonic clock
in this process:

- start: the create call issued -> the first watch event with phase Running;
- delete: the delete call issued -> the watch's DELETED event (kubelet deletes the
  object once the containers are stopped and the sandbox, network included, is torn
  down; the pods stop on SIGTERM at once, grace 10 s);
- sandbox network set-up and teardown as the runtime times them: containerd's CRI
  histograms `sandbox_create_network` / `sandbox_delete_network` (the CNI ADD / DEL
  chain, exec to result), and kubelet's `run_podsandbox` (the whole RunPodSandbox)
  and `pod_start_sli` (the SLI), as deltas over each cycle of the side's two nodes;
  their p50/p99 are bucket estimates, the means exact.

Prints p50/p99 per side, the ratios cniwarden / reference (below 1 = faster), the
goal (cniwarden's start p50 and p99 <= the reference's, p99 <= 5 s: met or not) and
the load average, and writes bench/results/pod_churn.json.

Root only; everything runs inside the cluster's own namespaces, and the cluster is
torn down at the end, whatever happened.
    python -m bench.pod_churn [--pods 100] [--rounds 3]   (or: make bench-churn)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from bench import churn_stats
from bench.churn_stats import EMPTY, Histogram
from bench.refcluster import TwoPairs, two_pairs
from devtools.localcluster import LocalCluster
from devtools.localcluster.containerd import metrics_url
from devtools.localcluster.pods import busybox_pod
from devtools.ship.install import LocalNode

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAMESPACE = "default"
SLO_SECONDS = 5.0
# PID 1 leaves on SIGTERM at once (a bare `sleep` would ignore it and wait out the grace).
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
Wanted = dict[str, tuple[str, dict[str, str]]]
CONTAINERD_HISTOGRAMS: Wanted = {
    "network_setup": ("containerd_cri_sandbox_create_network_seconds", {}),
    "network_teardown": ("containerd_cri_sandbox_delete_network_seconds", {}),
}
# Not kubelet_run_podsandbox_duration_seconds: kubelet evaluates its Observe argument
# in a `defer` statement, at the call's start (mean 6 us here); the runtime-operations
# histogram times the whole RunPodSandbox call.
KUBELET_HISTOGRAMS: Wanted = {
    "run_podsandbox": (
        "kubelet_runtime_operations_duration_seconds",
        {"operation_type": "run_podsandbox"},
    ),
    "pod_start_sli": ("kubelet_pod_start_sli_duration_seconds", {}),
}


def log(text: str) -> None:
    print(f"pod_churn: {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Side:
    """One CNI's node pair and everything measured on it, all rounds together."""

    name: str
    nodes: list[LocalNode]
    start: list[float] = field(default_factory=list)
    delete: list[float] = field(default_factory=list)
    not_running: list[str] = field(default_factory=list)
    not_deleted: list[str] = field(default_factory=list)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    scrape_errors: list[str] = field(default_factory=list)


class PodWatch(threading.Thread):
    """Watches the bench's pods and stamps, on this process's monotonic clock, when
    each was first seen Running and when it was DELETED. Reads the watch stream raw
    (one JSON line per event) so that no model deserialization delays the stamps."""

    def __init__(self, core: Any, selector: str) -> None:
        super().__init__(daemon=True, name="pod-watch")
        self.core, self.selector = core, selector
        self.running: dict[str, float] = {}
        self.deleted: dict[str, float] = {}
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        listing = core.list_namespaced_pod(NAMESPACE, label_selector=selector, _request_timeout=30)
        self.resource_version: str = listing.metadata.resource_version

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.follow()
        except BaseException as error:  # reported by `check`, the bench then stops
            self.error = error

    def follow(self) -> None:
        """One watch request (the server ends it after 50 s; the loop reconnects from
        the last resourceVersion, so no event is lost)."""
        response = self.core.list_namespaced_pod(
            NAMESPACE,
            label_selector=self.selector,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=50,
            _preload_content=False,
            _request_timeout=(10, 70),
        )
        try:
            for line in response:
                now = time.monotonic()
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    if obj.get("code") == 410:  # too old: start again from a fresh list
                        self.resource_version = self.core.list_namespaced_pod(
                            NAMESPACE, label_selector=self.selector, _request_timeout=30
                        ).metadata.resource_version
                        return
                    raise RuntimeError(f"watch error: {obj}")
                self.resource_version = obj["metadata"]["resourceVersion"]
                name = obj["metadata"].get("name", "")
                if event["type"] == "DELETED":
                    self.deleted.setdefault(name, now)
                elif (obj.get("status") or {}).get("phase") == "Running":
                    self.running.setdefault(name, now)
                if self.stopping.is_set():
                    return
        finally:
            response.release_conn()

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"the pod watch failed: {self.error!r}") from self.error
        if not self.is_alive():
            raise RuntimeError("the pod watch stopped")


def api(kubeconfig: Path, pool: int) -> Any:
    """CoreV1 of the official client, with a connection per parallel call."""
    configuration = kube_client.Configuration()
    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    configuration.connection_pool_maxsize = pool + 4
    return kube_client.CoreV1Api(kube_client.ApiClient(configuration))


def wait_all(
    names: list[str], seen: dict[str, float], watch: PodWatch, deadline: float, what: str
) -> list[str]:
    """Until every name is in `seen` or the deadline passed; returns the ones missing."""
    last_log = time.monotonic()
    while True:
        watch.check()
        missing = [n for n in names if n not in seen]
        if not missing or time.monotonic() > deadline:
            if missing:
                log(f"{len(missing)} pods never {what} (e.g. {missing[:3]})")
            return missing
        if time.monotonic() - last_log > 30:
            log(f"  {len(names) - len(missing)}/{len(names)} {what}")
            last_log = time.monotonic()
        time.sleep(0.1)


def stamped(
    pool: ThreadPoolExecutor, call: Callable[[str], None], names: list[str]
) -> dict[str, float]:
    """Issue `call(name)` for every name at once; each name's time just before its call."""
    issued: dict[str, float] = {}

    def one(name: str) -> None:
        issued[name] = time.monotonic()
        call(name)

    for future in [pool.submit(one, n) for n in names]:
        future.result(timeout=120)
    return issued


def scrape(
    cluster: LocalCluster, nodes: list[LocalNode], errors: list[str]
) -> dict[str, Histogram]:
    """The side's histograms now, both nodes added up. A page that cannot be read is
    noted in `errors` (those figures are then left out), never fatal: the pod
    latencies from the watch are the headline."""
    total: dict[str, Histogram] = {}
    for node in nodes:
        pages: list[tuple[str, Wanted]] = []
        try:
            with urllib.request.urlopen(metrics_url(node.ip), timeout=15) as resp:
                pages.append((resp.read().decode(), CONTAINERD_HISTOGRAMS))
        except OSError as error:
            errors.append(f"{node.name} containerd metrics: {error}")
        out = cluster.kubectl(
            "get", "--raw", f"/api/v1/nodes/{node.name}/proxy/metrics", check=False, timeout=30
        )
        if out.returncode == 0:
            pages.append((out.stdout, KUBELET_HISTOGRAMS))
        else:
            errors.append(f"{node.name} kubelet metrics: {out.stderr.strip()[:200]}")
        for text, wanted in pages:
            for key, hist in churn_stats.parse_histograms(text, wanted).items():
                total[key] = total.get(key, EMPTY).plus(hist)
    return total


@dataclass
class Churn:
    """What a cycle needs: the cluster, the API, the watch, the options."""

    bed: TwoPairs
    core: Any
    watch: PodWatch
    pool: ThreadPoolExecutor
    run_id: str
    args: argparse.Namespace

    def cycle(self, side: Side, label: str, pods: int, measured: bool = True) -> None:
        """Create `pods` pods at once on the side's pair, wait for all Running, delete
        them all, wait for all gone; add what was measured to `side`."""
        names = [f"churn-{self.run_id}-{side.name}-{label}-{i:03d}" for i in range(pods)]
        placement = {n: side.nodes[i % len(side.nodes)].name for i, n in enumerate(names)}
        before = scrape(self.bed.cluster, side.nodes, side.scrape_errors) if measured else {}
        load = loadavg()
        began = time.monotonic()

        def create(name: str) -> None:
            body = busybox_pod(
                name,
                placement[name],
                COMMAND,
                labels={"bench": "pod-churn", "run": self.run_id},
                grace_seconds=10,
            )
            self.core.create_namespaced_pod(
                NAMESPACE, body, _preload_content=False, _request_timeout=60
            )

        def delete(name: str) -> None:
            self.core.delete_namespaced_pod(
                name, NAMESPACE, _preload_content=False, _request_timeout=60
            )

        created = stamped(self.pool, create, names)
        deadline = time.monotonic() + self.args.timeout
        not_running = wait_all(names, self.watch.running, self.watch, deadline, "Running")
        up_at = time.monotonic()
        deleted = stamped(self.pool, delete, names)
        deadline = time.monotonic() + self.args.timeout
        not_deleted = wait_all(names, self.watch.deleted, self.watch, deadline, "deleted")
        gone_at = time.monotonic()
        if not measured:
            return
        after = scrape(self.bed.cluster, side.nodes, side.scrape_errors)
        start, _ = churn_stats.durations(created, self.watch.running)
        gone, _ = churn_stats.durations(deleted, self.watch.deleted)
        side.start += start
        side.delete += gone
        side.not_running += not_running
        side.not_deleted += not_deleted
        deltas = {k: after[k].minus(before[k]) for k in after if k in before}
        for key, delta in deltas.items():
            side.histograms[key] = side.histograms.get(key, EMPTY).plus(delta)
        row: dict[str, Any] = {
            "side": side.name,
            "label": label,
            "pods": pods,
            "all_running_s": round(up_at - began, 2),
            "all_gone_s": round(gone_at - up_at, 2),
            "start": churn_stats.summary(start),
            "delete": churn_stats.summary(gone),
            "network_setup_mean_s": deltas.get("network_setup", EMPTY).mean(),
            "loadavg_before": load,
            "loadavg_after": loadavg(),
        }
        side.cycles.append(row)
        log(
            f"{side.name} {label}: {pods} pods, all Running after {row['all_running_s']} s, "
            f"all gone {row['all_gone_s']} s later; start p50/p99 "
            f"{fmt(row['start']['p50'])}/{fmt(row['start']['p99'])} s; load {loadavg()}"
        )


def fmt(value: float | int | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@contextlib.contextmanager
def watching(bed: TwoPairs, run_id: str, parallel: int) -> Iterator[Churn]:
    """The API client, the pod watch and the call pool for one run; on the way out,
    whatever happened, every pod of the run is deleted (the cluster goes down after)."""
    core = api(bed.cluster.kubeconfig, parallel)
    selector = f"bench=pod-churn,run={run_id}"
    watch = PodWatch(core, selector)
    watch.start()
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        yield Churn(bed, core, watch, pool, run_id, argparse.Namespace())
    finally:
        watch.stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        bed.cluster.kubectl(
            "delete",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            selector,
            "--grace-period=0",
            "--force",
            "--wait=false",
            check=False,
            timeout=60,
        )
        watch.join(timeout=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=100, help="per cycle, half on each node")
    parser.add_argument("--rounds", type=int, default=3, help="one cycle per side each")
    parser.add_argument("--warmup", type=int, default=4, help="pods per side, not measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between cycles")
    parser.add_argument("--timeout", type=float, default=600.0, help="per wait, seconds")
    parser.add_argument("--parallel", type=int, default=25, help="API calls in flight")
    parser.add_argument(
        "--swap", action="store_true", help="reference on nodes 2-3, cniwarden on nodes 0-1"
    )
    args = parser.parse_args(argv)
    run_id = secrets.token_hex(2)
    began = time.monotonic()
    load_start = loadavg()
    log(f"run {run_id}: {args.pods} pods x {args.rounds} rounds per side; load {load_start}")
    with (
        two_pairs("churn", log, swap=args.swap) as bed,
        watching(bed, run_id, args.parallel) as churn,
    ):
        churn.args = args
        reference, ours = Side("ref", bed.reference), Side("cw", bed.cniwarden)
        setup_s = time.monotonic() - began
        log(f"cluster ready after {setup_s:.0f} s; load {loadavg()}")
        for side in (reference, ours):
            churn.cycle(side, "warm", args.warmup, measured=False)
        for round_ in range(args.rounds):
            for side in (reference, ours) if round_ % 2 == 0 else (ours, reference):
                time.sleep(args.settle)
                churn.cycle(side, f"r{round_ + 1}", args.pods)
        report = summarize(reference, ours, args)
        report["setup_s"] = round(setup_s, 1)
    report["wall_s"] = round(time.monotonic() - began, 1)
    report["loadavg"] = {"start": load_start, "end": loadavg()}
    print_report(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pod_churn.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def side_report(side: Side) -> dict[str, Any]:
    return {
        "nodes": [n.name for n in side.nodes],
        "start_s": churn_stats.summary(side.start),
        "delete_s": churn_stats.summary(side.delete),
        **{
            f"{key}_s": churn_stats.histogram_summary(hist)
            for key, hist in sorted(side.histograms.items())
        },
        "not_running": side.not_running,
        "not_deleted": side.not_deleted,
        "scrape_errors": side.scrape_errors,
        "cycles": side.cycles,
    }


def summarize(reference: Side, ours: Side, args: argparse.Namespace) -> dict[str, Any]:
    ref, cw = side_report(reference), side_report(ours)
    ratios = {
        f"{key} {q}": churn_stats.ratio(cw[key][q], ref[key][q])
        for key in ref
        if key.endswith("_s") and key in cw
        for q in ("p50", "p99", "mean")
    }
    return {
        "pods_per_cycle": args.pods,
        "rounds": args.rounds,
        "warmup_pods": args.warmup,
        "reference": ref,
        "cniwarden": cw,
        "ratios_cniwarden_over_reference": ratios,
        "goal": churn_stats.start_goal(cw["start_s"], ref["start_s"], SLO_SECONDS),
    }


ROWS = (
    ("pod start (create -> Running, watch)", "start_s"),
    ("pod delete (delete -> DELETED, watch)", "delete_s"),
    ("sandbox network set-up (containerd)", "network_setup_s"),
    ("sandbox network teardown (containerd)", "network_teardown_s"),
    ("RunPodSandbox (kubelet)", "run_podsandbox_s"),
    ("pod start SLI (kubelet)", "pod_start_sli_s"),
)


def print_report(report: dict[str, Any]) -> None:
    ref, cw = report["reference"], report["cniwarden"]
    ratios = report["ratios_cniwarden_over_reference"]
    head = ("reference p50/p99/mean s", "cniwarden p50/p99/mean s", "ratio p50/p99")
    print(f"{'':<40}{head[0]:>28}{head[1]:>28}{head[2]:>16}")
    for title, key in ROWS:
        if key not in ref or key not in cw:
            continue
        cells = [
            " / ".join(fmt(s[q], 3) for q in ("p50", "p99", "mean")) + f" (n={s['n']})"
            for s in (ref[key], cw[key])
        ]
        ratio = " / ".join(fmt(ratios.get(f"{key} {q}")) for q in ("p50", "p99"))
        print(f"{title:<40}{cells[0]:>28}{cells[1]:>28}{ratio:>16}")
    goal = report["goal"]

    def word(flag: bool | None) -> str:
        return {True: "met", False: "NOT met", None: "unknown"}[flag]

    print(
        f"goal: cniwarden start p50 <= reference: {word(goal['p50_le_reference'])}; "
        f"p99 <= reference: {word(goal['p99_le_reference'])}; "
        f"p99 <= {SLO_SECONDS:.0f} s: {word(goal['p99_le_slo'])} -> {word(goal['met'])}"
    )
    missing = {s: len(report[s]["not_running"]) for s in ("reference", "cniwarden")}
    print(
        f"pods never Running: {missing}; load average {report['loadavg']}; "
        f"wall {report['wall_s']:.0f} s (set-up {report.get('setup_s', 0):.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
