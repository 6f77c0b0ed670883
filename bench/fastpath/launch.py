"""The cni-servers the bench runs, and what /proc says about a process's memory and CPU."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.fastpath.impls import ROOT

CHART = ROOT / "charts" / "cniwarden"


def chart_server_args() -> list[str]:
    """The cni-server's options as the chart runs it (values.yaml's agent.cniServer), and
    its log level: the chart passes none, so the server's default (INFO) applies; a
    --log-level in the chart's template would be taken over here."""
    import yaml  # noqa: PLC0415 (dev dependency; only the bench needs it)

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    server = values["agent"]["cniServer"]
    args = [
        f"--workers={server['workers']}",
        f"--request-timeout={server['requestTimeoutSeconds']}",
    ]
    template = (CHART / "templates" / "agent.yaml").read_text()
    args += [line.strip(" -") for line in template.splitlines() if "--log-level" in line]
    if values.get("metrics", {}).get("enabled"):
        # Served as in the chart (the histogram is observed on every request anyway),
        # on a free loopback port instead of the pod IP.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            args.append(f"--metrics-address=127.0.0.1:{probe.getsockname()[1]}")
    return args


def start_server(work: Path, handler: str | None = None) -> tuple[subprocess.Popen[str], Path]:
    """The shipped server (`python -m node_plugin.server`) with the chart's options, its
    log to a file as a container runtime would collect it; or, with `handler` (a
    devtools.fake_handlers factory), the test harness's, which can load one."""
    sock = work / ("echo.sock" if handler else "cni.sock")
    entry = "devtools.cniserver_harness" if handler else "node_plugin.server"
    argv = [sys.executable, "-m", entry, "--socket", str(sock), "--del-queue", str(work / "queue")]
    argv += ["--handler", handler, "--log-level", "WARNING"] if handler else chart_server_args()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}"}
    log = (work / f"{sock.stem}.log").open("w")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=log, text=True)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"cni-server did not start: {(work / f'{sock.stem}.log').read_text()}")
        time.sleep(0.05)
    return proc, sock


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def process_cpu_ms(pid: int) -> float:
    """CPU time of every thread of `pid` (schedstat, ns) and of its reaped children
    (iptables, nft: cutime + cstime, in clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += int((task / "schedstat").read_text().split()[0])
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    children_ticks = int(stat[13]) + int(stat[14])  # fields 16 and 17: cutime, cstime
    return total / 1e6 + children_ticks * 1000 / os.sysconf("SC_CLK_TCK")
