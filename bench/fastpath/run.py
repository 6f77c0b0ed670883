"""The bench's main: namespaces, servers, warm-up, each measurement, the report."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench.fastpath
from bench.fastpath.handler_profile import profile_handler
from bench.fastpath.impls import (
    REFERENCE_DIR,
    ROOT,
    Impl,
    must,
    run_plugin,
    standalone_dir,
    with_prev,
)
from bench.fastpath.launch import chart_server_args, rss_mb, start_server
from bench.fastpath.measure import (
    HostLinks,
    del_until_gone,
    floor,
    parallel_interleaved,
    rss_with_attachments,
    sequential,
)
from bench.fastpath.report import report
from bench.sandboxes import enter_netns, namespaces

RESULTS = ROOT / "bench" / "results"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(bench.fastpath.__doc__ or "").splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument(
        "--parallel-rounds", type=int, default=3, help="bursts per implementation, interleaved"
    )
    parser.add_argument("--attachments", type=int, default=200)
    parser.add_argument("--masq", action="store_true", help="ipMasq on (iptables rules)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--reference-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (network namespaces)")
    subprocess.run(["make", "-s", "plugins"], cwd=ROOT, check=True)
    run_id = secrets.token_hex(2)
    count = max(args.sandboxes, args.parallel)
    work = Path(tempfile.mkdtemp(prefix="cw-bench-", dir="/tmp"))
    servers: list[subprocess.Popen[str]] = []
    try:
        with namespaces(f"cwb{run_id}", count, host="host") as (host, sandboxes):
            enter_netns(host)
            sh("ip", "link", "set", "lo", "up")
            full = (
                not args.reference_only and importlib.util.find_spec("node_plugin.api") is not None
            )
            server, sock = start_server(work) if full else (None, work / "none")
            if server is not None:
                servers.append(server)
            echo, echo_sock = start_server(work, "devtools.fake_handlers:echo")
            servers.append(echo)
            impls = [
                Impl("reference", REFERENCE_DIR, "bridge", "host-local", "eth-ref", "10.231.0.0/16")
            ]
            standalone = standalone_dir(work)
            if standalone is not None and full:
                impls.append(
                    Impl(
                        "standalone",
                        standalone,
                        "cniwarden-bridge",
                        "cniwarden-host-local",
                        "eth-py",
                        "10.232.0.0/16",
                    )
                )
                impls.append(
                    Impl(
                        "shim+server",
                        ROOT / "build" / "cni-bin",
                        "cniwarden-bridge",
                        "cniwarden-host-local",
                        "eth-fp",
                        "10.233.0.0/16",
                        env={"CNIWARDEN_SOCKET": str(sock)},
                    )
                )
            else:
                print("node_plugin console scripts missing: reference only", file=sys.stderr)
            configs = {i.label: i.config(run_id, work, args.masq) for i in impls}
            # Warm-up: page cache, bridge creation, the server's first request.
            for impl in impls:
                s = must(
                    run_plugin(impl, "ADD", configs[impl.label], "warm", sandboxes[0]), "warm-up"
                )
                must(
                    run_plugin(
                        impl, "DEL", with_prev(configs[impl.label], s.stdout), "warm", sandboxes[0]
                    ),
                    "warm-up DEL",
                )
            data: dict[str, Any] = {
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "sandboxes": args.sandboxes,
                "rounds": args.rounds,
                "masq": args.masq,
                "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                "parallel_n": args.parallel,
                "parallel_rounds_n": args.parallel_rounds,
                "server_args": chart_server_args(),
            }
            if server is not None:
                data["rss_idle_mb"] = rss_mb(server.pid)[0]
            watch = HostLinks() if full else None
            data["sequential"], data["cpu"] = sequential(
                impls,
                configs,
                sandboxes[: args.sandboxes],
                args.rounds,
                server.pid if server is not None else None,
                watch,
            )
            if watch is not None:
                data["gone"] = del_until_gone(impls, configs, sandboxes[: args.sandboxes], watch)
            data["parallel"], data["parallel_rounds"] = parallel_interleaved(
                impls, configs, sandboxes[: args.parallel], watch, args.parallel_rounds
            )
            fast = [i for i in impls if i.label == "shim+server"]
            if fast and server is not None:
                data["rss"] = rss_with_attachments(
                    fast[0],
                    configs["shim+server"],
                    sandboxes[: args.sandboxes],
                    server.pid,
                    args.attachments,
                )
            data["floor"] = floor(ROOT / "build" / "cni-bin", echo_sock, sandboxes[0])
            profile_text = ""
            if fast and not args.no_profile:
                cfg = {**configs["shim+server"], "name": f"cwbprof{run_id}"}
                data["handler"], profile_text = profile_handler(cfg, sandboxes[0])
        data["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    finally:
        for proc in servers:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    text = report(data)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"fastpath-{stamp}.md").write_text(text + "\n```\n" + profile_text + "```\n")
    (RESULTS / f"fastpath-{stamp}.json").write_text(json.dumps(data, indent=1))
    if profile_text:
        print(profile_text)
    return 0
