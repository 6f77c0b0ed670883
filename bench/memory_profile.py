"""Where a cniwarden process's memory goes: RSS after each import layer, then
tracemalloc's live Python allocations by package once the process has run a while.

    .venv/bin/python -m bench.memory_profile imports
    KUBECONFIG=... .venv/bin/python -m bench.memory_profile agent NODE HOST_ROOT
    KUBECONFIG=... .venv/bin/python -m bench.memory_profile operator

`agent`/`operator` run the real component (its kopf registry, against the API server
of KUBECONFIG) for `--seconds`, with tracemalloc on from the first import, then print
the top packages and lines. RSS includes what tracemalloc cannot see (shared
libraries, malloc's free lists, thread stacks); the difference is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import re
import sys
import tracemalloc
from pathlib import Path

LAYERS = [
    "ssl",
    "asyncio",
    "yaml",
    "pydantic",
    "aiohttp",
    "kubernetes.client",
    "kopf",
    "cni_operator.api",
    "cni_operator.reconcile",
    "cni_operator.hostgw_node",
    "cni_operator.kube",
    "cni_operator.agent",
    "cni_operator.controller",
]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def imports() -> None:
    previous = rss_mib()
    print("| module (in this order) | RSS added | RSS |\n|---|---|---|")
    print(f"| python | | {previous:.1f} |")
    for name in LAYERS:
        if name in sys.modules:
            print(f"| {name} | (already loaded) | |")
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            print(f"| {name} | not installed | |")
            continue
        now = rss_mib()
        print(f"| {name} | +{now - previous:.1f} MiB | {now:.1f} MiB |")
        previous = now


def package_of(filename: str) -> str:
    match = re.search(r"site-packages/([^/]+)", filename)
    if match:
        return match.group(1).removesuffix(".py")
    match = re.search(r"/(cni_operator|node_plugin)/", filename)
    if match:
        return match.group(1)
    match = re.search(r"python3\.\d+/([^/]+)", filename)
    return f"stdlib:{match.group(1).removesuffix('.py')}" if match else filename


def report(seconds: float) -> None:
    snapshot = tracemalloc.take_snapshot()
    by_package: collections.Counter[str] = collections.Counter()
    for stat in snapshot.statistics("filename"):
        by_package[package_of(stat.traceback[0].filename)] += stat.size
    traced = sum(by_package.values()) / 2**20
    print(f"after {seconds:.0f} s: RSS {rss_mib():.1f} MiB, traced Python allocations", end=" ")
    print(f"{traced:.1f} MiB")
    print("| package | MiB |\n|---|---|")
    for package, size in by_package.most_common(15):
        print(f"| {package} | {size / 2**20:.2f} |")
    print("\npydantic's allocations by the first caller outside pydantic/typing/stdlib:")
    callers: collections.Counter[str] = collections.Counter()
    for trace in snapshot.traces:
        frames = list(trace.traceback)
        if "pydantic" not in frames[0].filename:
            continue
        outside = (f for f in frames if re.search(r"cni_operator|node_plugin|kopf/", f.filename))
        frame = next(outside, frames[-1])
        callers[f"{frame.filename}:{frame.lineno}"] += trace.size
    for caller, size in callers.most_common(8):
        print(f"  {size / 2**20:6.2f} MiB  {caller}")
    print("\ntop lines:")
    for stat in snapshot.statistics("lineno")[:15]:
        frame = stat.traceback[0]
        print(f"  {stat.size / 2**20:6.2f} MiB  {frame.filename}:{frame.lineno}")


async def run_for(component: str, argv: list[str], seconds: float) -> None:
    import kopf  # noqa: PLC0415 (after tracemalloc started)

    if component == "agent":
        from cni_operator.agent import Agent, AgentSettings, build_registry  # noqa: PLC0415

        node, root = argv
        registry = build_registry(Agent(AgentSettings(node, Path(root))))
    else:
        from cni_operator.controller import Controller, ControllerSettings  # noqa: PLC0415
        from cni_operator.controller import build_registry as controller_registry  # noqa: PLC0415

        registry = controller_registry(Controller(ControllerSettings()))
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop)
    )
    await asyncio.sleep(seconds)
    report(seconds)
    stop.set_result(None)
    await task


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("what", choices=["imports", "agent", "operator"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("rest", nargs="*", help="agent: NODE HOST_ROOT")
    args = parser.parse_args()
    if args.what == "imports":
        imports()
        return 0
    tracemalloc.start(30)
    asyncio.run(run_for(args.what, args.rest, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
