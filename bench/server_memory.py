"""The cni-server's RSS with N attached pods, as the chart runs it, once per
environment variant (interleaved rounds): where its memory goes and what cuts it.

    sudo .venv/bin/python -m bench.server_memory --attachments 100 --rounds 2

Runs in a private "node" network namespace with sandboxes of its own (bench/sandboxes),
through the shim (build/cni-bin), like `make bench-fastpath`'s RSS figure.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.fastpath.impls import ROOT, Impl
from bench.fastpath.launch import rss_mb, start_server
from bench.fastpath.measure import rss_with_attachments
from bench.sandboxes import enter_netns, namespaces

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--attachments", type=int, default=100)
    parser.add_argument("--sandboxes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    subprocess.run(["make", "-s", "plugins"], cwd=ROOT, check=True)
    run_id = secrets.token_hex(2)
    work = Path(tempfile.mkdtemp(prefix="cw-srvmem-", dir="/tmp"))
    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    try:
        with namespaces(f"cwm{run_id}", args.sandboxes, host="host") as (host, sandboxes):
            enter_netns(host)
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            for index in range(args.rounds):
                for label, extra in VARIANTS.items():
                    saved = dict(os.environ)
                    os.environ.update(extra)
                    run = work / f"{label}-{index}".replace("=", "")
                    run.mkdir()
                    try:
                        server, sock = start_server(run)
                    finally:
                        os.environ.clear()
                        os.environ.update(saved)
                    try:
                        idle, _ = rss_mb(server.pid)
                        impl = Impl(
                            label,
                            ROOT / "build" / "cni-bin",
                            "cniwarden-bridge",
                            "cniwarden-host-local",
                            "eth0",
                            "10.238.0.0/16",
                            env={"CNIWARDEN_SOCKET": str(sock)},
                        )
                        config = impl.config(run_id, run, masq=False)
                        got = rss_with_attachments(
                            impl, config, sandboxes, server.pid, args.attachments
                        )
                        results[label].append((idle, got["rss_mb"], got["hwm_mb"]))
                        print(f"{label} round {index}: idle {idle:.1f}, {got}", file=sys.stderr)
                    finally:
                        server.terminate()
                        server.wait(timeout=30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"| cni-server | idle RSS | RSS with {args.attachments} attachments | peak |")
    print("|---|---|---|---|")
    for label, rows in results.items():
        idle, rss, hwm = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"| {label} | {idle:.1f} MiB | {rss:.1f} MiB | {hwm:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
