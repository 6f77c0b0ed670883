"""The measurements: sequential verbs, DEL alone until the veth is gone, parallel bursts,
the floors, and the server's memory with many attachments."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.fastpath.impls import Impl, Sample, finish, must, run_plugin, spawn, with_prev
from bench.fastpath.launch import children_cpu_ms, process_cpu_ms, rss_mb
from bench.stats import rank_percentile as pct


def rotated(impls: list[Impl], i: int) -> list[Impl]:
    k = i % len(impls)
    return impls[k:] + impls[:k]


def sequential(
    impls: list[Impl],
    configs: dict[str, dict[str, Any]],
    sandboxes: list[str],
    rounds: int,
    server_pid: int | None,
    watch: HostLinks | None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """Per implementation and verb: the wall times, and the mean CPU time per call.

    CPU: each plugin process's own (rusage of the child), and for shim+server also the
    server's: all its threads and children, taken per phase (all ADDs of a round, all
    CHECKs, all DELs) so that what it does after answering counts too: the reaper
    unregistering the DELs' veth pairs (the DEL phase ends once they are gone) and the
    periodic sweeps of whichever phase they fall in.
    """
    times: dict[str, dict[str, list[float]]] = {
        i.label: {"ADD": [], "CHECK": [], "DEL": []} for i in impls
    }
    cpu: dict[str, dict[str, float]] = {i.label: {"ADD": 0, "CHECK": 0, "DEL": 0} for i in impls}

    def timed(impl: Impl, verb: str, cfg: dict[str, Any], sb: str) -> Sample:
        before = children_cpu_ms()
        sample = must(run_plugin(impl, verb, cfg, sb, sb), f"{impl.label} {verb}")
        cpu[impl.label][verb] += children_cpu_ms() - before
        times[impl.label][verb].append(sample.ms)
        return sample

    def server_cpu() -> float:
        return process_cpu_ms(server_pid) if server_pid else 0.0

    for r in range(rounds):
        results: dict[tuple[str, str], bytes] = {}
        for verb in ("ADD", "CHECK", "DEL"):
            start = server_cpu()
            ours = [
                watch.index_of(results["shim+server", sb])
                for sb in sandboxes
                if watch is not None and verb == "DEL" and ("shim+server", sb) in results
            ]
            for i, sb in enumerate(sandboxes):
                for impl in rotated(impls, i + r):
                    cfg = configs[impl.label]
                    if verb != "ADD":
                        cfg = with_prev(cfg, results[impl.label, sb])
                    sample = timed(impl, verb, cfg, sb)
                    if verb == "ADD":
                        results[impl.label, sb] = sample.stdout
            if ours and watch is not None:
                watch.wait_gone(ours)  # the reaper's work is part of DEL's cost
            if server_pid and "shim+server" in cpu:
                cpu["shim+server"][verb] += server_cpu() - start
    calls = rounds * len(sandboxes)
    return times, {label: {v: t / calls for v, t in verbs.items()} for label, verbs in cpu.items()}


class HostLinks:
    """Watches host veths from the bench's (host) namespace, to time when a DEL's veth
    pair is really gone: the server answers DEL before its reaper unregisters the pair."""

    def __init__(self) -> None:
        from node_plugin.kernel.rtnl import Rtnl  # noqa: PLC0415 (the bench runs reference-only too)

        self._sock = Rtnl()

    def index_of(self, add_result: bytes) -> int:
        """The host veth's ifindex (stable across the tombstone's rename)."""
        name = json.loads(add_result)["interfaces"][1]["name"]
        link = self._sock.get_link(name=name)
        if link is None:
            raise SystemExit(f"host veth {name} not found")
        return link.index

    def wait_gone(self, indices: list[int], timeout: float = 30.0) -> float:
        """Returns perf_counter() at the first poll that finds none of `indices`."""
        deadline = time.monotonic() + timeout
        left = list(indices)
        while True:
            left = [i for i in left if self._sock.get_link(index=i) is not None]
            now = time.perf_counter()
            if not left:
                return now
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(left)} host veths still there {timeout}s after DEL")
            time.sleep(0.0002)


def del_until_gone(
    impls: list[Impl],
    configs: dict[str, dict[str, Any]],
    sandboxes: list[str],
    watch: HostLinks,
) -> dict[str, dict[str, list[float]]]:
    """Per implementation: DEL as answered, and until its host veth is unregistered. Each
    DEL starts once the previous one is completely gone (no reaping in the background)."""
    out: dict[str, dict[str, list[float]]] = {i.label: {"answered": [], "gone": []} for i in impls}
    for i, sb in enumerate(sandboxes):
        for impl in rotated(impls, i):
            cfg = configs[impl.label]
            added = must(run_plugin(impl, "ADD", cfg, f"g{sb}", sb), f"{impl.label} ADD")
            index = watch.index_of(added.stdout)
            proc, started = spawn(impl, "DEL", with_prev(cfg, added.stdout), f"g{sb}", sb)
            answered = must(finish(proc, started), f"{impl.label} DEL")
            gone = watch.wait_gone([index])
            out[impl.label]["answered"].append(answered.ms)
            out[impl.label]["gone"].append((gone - started) * 1000)
    return out


def parallel(
    impl: Impl, config: dict[str, Any], sandboxes: list[str], watch: HostLinks | None
) -> dict[str, float]:
    """Wall time of len(sandboxes) ADDs started at once, then of as many DELs: until the
    last exit, and until the last host veth is unregistered."""
    out: dict[str, float] = {}
    results: dict[str, bytes] = {}
    for verb in ("ADD", "DEL"):
        configs = {
            sb: config if verb == "ADD" else with_prev(config, results[sb]) for sb in sandboxes
        }
        indices = (
            [watch.index_of(results[sb]) for sb in sandboxes] if watch and verb == "DEL" else []
        )
        started = time.perf_counter()
        procs = [(sb, spawn(impl, verb, configs[sb], f"p{sb}", sb)[0]) for sb in sandboxes]
        for sb, proc in procs:
            sample = must(finish(proc, started), f"{impl.label} parallel {verb}")
            results[sb] = sample.stdout
        out[verb] = (time.perf_counter() - started) * 1000
        if watch is not None and verb == "DEL":
            out["DEL_gone"] = (watch.wait_gone(indices) - started) * 1000
    return out


def parallel_interleaved(
    impls: list[Impl],
    configs: dict[str, dict[str, Any]],
    sandboxes: list[str],
    watch: HostLinks | None,
    rounds: int,
) -> tuple[dict[str, dict[str, float]], list[dict[str, dict[str, float]]]]:
    """parallel() for every implementation, `rounds` times, the order rotated per round so
    that no implementation always runs on a machine the one before it has just loaded;
    each burst starts once the one before is completely gone (DEL until unregistered).
    The median of the rounds per implementation, and every round."""
    per_round: list[dict[str, dict[str, float]]] = []
    for r in range(rounds):
        per_round.append(
            {
                impl.label: parallel(impl, configs[impl.label], sandboxes, watch)
                for impl in rotated(impls, r)
            }
        )
    medians = {
        impl.label: {
            key: statistics.median(run[impl.label][key] for run in per_round)
            for key in per_round[0][impl.label]
        }
        for impl in impls
    }
    return medians, per_round


def floor(shim_dir: Path, echo_sock: Path, sandbox: str, n: int = 60) -> dict[str, float]:
    """What the fast path costs with nothing to do: exec alone, exec + socket round trip."""
    true = Impl("true", Path("/bin"), "true", "-", "eth9", "-")
    echo = Impl(
        "echo",
        shim_dir,
        "cniwarden-bridge",
        "-",
        "eth9",
        "-",
        env={"CNIWARDEN_SOCKET": str(echo_sock)},
    )
    cfg_true: dict[str, Any] = {"type": "true"}
    cfg_echo: dict[str, Any] = {"type": "cniwarden-bridge"}
    exec_ms = [run_plugin(true, "ADD", cfg_true, "f", sandbox).ms for _ in range(n)]
    shim_ms = [must(run_plugin(echo, "ADD", cfg_echo, "f", sandbox), "echo").ms for _ in range(n)]
    return {"exec_p50": pct(exec_ms, 0.5), "shim_noop_p50": pct(shim_ms, 0.5)}


def rss_with_attachments(
    impl: Impl, config: dict[str, Any], sandboxes: list[str], server_pid: int, total: int
) -> dict[str, float]:
    per = -(-total // len(sandboxes))
    attached: list[tuple[str, str, bytes]] = []
    for k in range(per):
        for sb in sandboxes:
            if len(attached) == total:
                break
            ifname = f"r{k}"
            s = must(run_plugin(impl, "ADD", config, f"rss{sb}{k}", sb, ifname), "rss ADD")
            attached.append((sb, ifname, s.stdout))
    rss, hwm = rss_mb(server_pid)
    for k, (sb, ifname, result) in enumerate(attached):
        must(
            run_plugin(impl, "DEL", with_prev(config, result), f"rss{sb}{ifname[1:]}", sb, ifname),
            f"rss DEL {k}",
        )
    return {"attachments": len(attached), "rss_mb": rss, "hwm_mb": hwm}
