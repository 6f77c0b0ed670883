"""Plugin latency: Debian's reference bridge + host-local against cniwarden's standalone plugins.

One run, the same kind of sandboxes for both: each implementation gets its own bridge,
subnet and store in one private "node" namespace, and ADD, CHECK and DEL of N
attachments are timed as whole processes, from exec to exit, as a runtime sees them.
The order alternates per sandbox so machine noise hits both sides alike.

    sudo .venv/bin/python -m bench.plugin [--sandboxes 40] [--ours DIR]

`--ours DIR` times other executables named cniwarden-bridge/cniwarden-host-local
(default: this venv's console scripts). Everything is created in namespaces of its
own and deleted at the end, even on failure. Prints a Markdown table with p50/p90 and
ratios (ours / reference) and writes bench/results/plugin.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sandboxes import cni_env, enter_netns, namespaces
from bench.stats import percentile

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path("/usr/lib/cni")
RESULTS = ROOT / "bench" / "results"
VERSION = "1.0.0"  # the newest CNI version Debian's reference plugins (1.1.1) speak
VERBS = ("ADD", "CHECK", "DEL")
IFNAMES = {"reference": "eth0", "cniwarden": "eth1"}  # both attach to every sandbox


def config(kind: str, run_id: str, n: int, store: Path) -> dict[str, Any]:
    bridge_type, ipam_type = (
        ("bridge", "host-local")
        if kind == "reference"
        else ("cniwarden-bridge", "cniwarden-host-local")
    )
    return {
        "cniVersion": VERSION,
        "name": f"bench-{kind}-{run_id}",
        "type": bridge_type,
        "bridge": f"bb{n}{run_id}"[:15],
        "isGateway": True,
        "ipam": {"type": ipam_type, "subnet": f"10.{200 + n}.0.0/16", "dataDir": str(store)},
    }


def exec_plugin(
    exe: Path,
    command: str,
    conf: dict[str, Any],
    cni_path: str,
    cid: str,
    netns: str,
    ifname: str = "eth0",
) -> tuple[float, float, bytes]:
    """Wall time and CPU time (user + system, ms) of one exec, and its stdout."""
    env = cni_env(command, cid, netns, ifname, cni_path)
    stdin = json.dumps(conf).encode()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([str(exe)], input=stdin, env=env, capture_output=True, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{exe.name} {command} failed: {proc.stdout!r} {proc.stderr!r}")
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return elapsed, cpu, proc.stdout


def run(count: int, ours_dir: Path) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    impls = {"reference": REFERENCE / "bridge", "cniwarden": ours_dir / "cniwarden-bridge"}
    cni_path = f"{ours_dir}:{REFERENCE}"
    samples: dict[str, dict[str, list[float]]] = {k: {v: [] for v in VERBS} for k in impls}
    cpu: dict[str, dict[str, list[float]]] = {k: {v: [] for v in VERBS} for k in impls}
    with (
        tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp,
        namespaces(f"cwb{run_id}", count, host="node") as (host, sandboxes),
    ):
        enter_netns(host)
        confs = {k: config(k, run_id, n, Path(tmp) / k) for n, k in enumerate(impls)}
        prev: dict[tuple[str, int], bytes] = {}
        for verb in VERBS:
            for i, sb in enumerate(sandboxes):
                order = list(impls) if i % 2 == 0 else list(reversed(impls))
                for kind in order:
                    conf = confs[kind]
                    if verb == "CHECK":
                        conf = dict(conf, prevResult=json.loads(prev[(kind, i)]))
                    ifname = IFNAMES[kind]
                    ms, cpu_ms, out = exec_plugin(
                        impls[kind], verb, conf, cni_path, f"b{i}", sb, ifname
                    )
                    samples[kind][verb].append(ms)
                    cpu[kind][verb].append(cpu_ms)
                    if verb == "ADD":
                        prev[(kind, i)] = out
        version_ms = {
            k: statistics.median(
                exec_plugin(exe, "VERSION", {}, cni_path, "", sandboxes[0])[0] for _ in range(10)
            )
            for k, exe in impls.items()
        }
    return {
        "sandboxes": count,
        "ours": str(ours_dir),
        "samples": samples,
        "cpu": cpu,
        "version": version_ms,
        "loadavg": os.getloadavg(),
    }


def report(data: dict[str, Any]) -> str:
    """Wall time (exec to exit) p50/p90 and CPU time p50, with ratios ours / reference."""
    wall, cpu = data["samples"], data["cpu"]
    rows = [
        "| verb | reference p50 / p90 | cniwarden p50 / p90 | ratio p50 / p90 "
        "| CPU p50 reference / cniwarden |",
        "|---|---|---|---|---|",
    ]
    for verb in VERBS:
        ref, ours = wall["reference"][verb], wall["cniwarden"][verb]
        r50, r90 = percentile(ref, 0.5), percentile(ref, 0.9)
        o50, o90 = percentile(ours, 0.5), percentile(ours, 0.9)
        c_ref = percentile(cpu["reference"][verb], 0.5)
        c_ours = percentile(cpu["cniwarden"][verb], 0.5)
        rows.append(
            f"| {verb} | {r50:.1f} / {r90:.1f} ms | {o50:.1f} / {o90:.1f} ms "
            f"| {o50 / r50:.1f}x / {o90 / r90:.1f}x | {c_ref:.0f} / {c_ours:.0f} ms |"
        )
    v = data["version"]
    rows.append(
        f"| VERSION (start-up floor) | {v['reference']:.1f} ms | {v['cniwarden']:.1f} ms "
        f"| {v['cniwarden'] / v['reference']:.1f}x | |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=40)
    parser.add_argument(
        "--ours",
        type=Path,
        default=Path(sys.executable).parent,
        help="directory holding cniwarden-bridge and cniwarden-host-local",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/plugin.py needs root (network namespaces)")
    data = run(args.sandboxes, args.ours.resolve())
    table = report(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "plugin.json").write_text(json.dumps({**data, "table": table}, indent=2))
    load = ", ".join(f"{x:.1f}" for x in data["loadavg"])
    print(f"{data['sandboxes']} sandboxes, one bridge per implementation, load average {load}:\n")
    print(table)


if __name__ == "__main__":
    main()
