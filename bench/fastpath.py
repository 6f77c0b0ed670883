"""Three-way CNI latency benchmark: reference Go plugins, standalone Python plugins, shim+server.

One run, one process tree, the same sandboxes: every sandbox gets one attachment from each
implementation (different interface names, different bridges and subnets), and the order
of the implementations rotates per sandbox so machine noise spreads evenly. Each verb is
timed as a whole process, from exec to exit, as a runtime sees it.

    sudo .venv/bin/python -m bench.fastpath [--sandboxes 40] [--rounds 3] [--masq]

Everything lives in network namespaces the bench creates (a "host" namespace the bench
and the server run in, plus the sandboxes) and is deleted at the end, even on failure.
Prints a Markdown report and writes it with the raw samples to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import os
import pstats
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.netns import cni_env, enter_netns, namespaces

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path("/usr/lib/cni")
RESULTS = ROOT / "bench" / "results"
CNI_VERSION = "1.0.0"  # the newest version Debian's reference plugins (1.1.1) speak


# ---- namespaces -------------------------------------------------------------------


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# ---- implementations ------------------------------------------------------------


@dataclass
class Impl:
    label: str
    bin_dir: Path
    bridge_type: str
    ipam_type: str
    ifname: str
    subnet: str
    env: dict[str, str] = field(default_factory=dict)

    def config(self, run_id: str, work: Path, masq: bool) -> dict[str, Any]:
        short = self.ifname[-3:]
        return {
            "cniVersion": CNI_VERSION,
            "name": f"cwb{short}{run_id}",
            "type": self.bridge_type,
            "bridge": f"cwb{short}{run_id}",
            "isGateway": True,
            "ipMasq": masq,
            "hairpinMode": True,
            "ipam": {
                "type": self.ipam_type,
                "subnet": self.subnet,
                "dataDir": str(work / f"ipam-{short}"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }


@dataclass
class Sample:
    ms: float
    code: int
    stdout: bytes
    stderr: bytes


def run_plugin(
    impl: Impl,
    command: str,
    config: dict[str, Any],
    container: str,
    netns: str,
    ifname: str | None = None,
) -> Sample:
    proc, started = spawn(impl, command, config, container, netns, ifname)
    return finish(proc, started)


def spawn(
    impl: Impl,
    command: str,
    config: dict[str, Any],
    container: str,
    netns: str,
    ifname: str | None = None,
) -> tuple[subprocess.Popen[bytes], float]:
    """Starts the plugin and hands it its stdin at once (a config fits in a pipe buffer)."""
    env = {
        **cni_env(command, container, netns, ifname or impl.ifname, str(impl.bin_dir)),
        **impl.env,
    }
    if "PYTHONPATH" in os.environ:  # a bench of a source tree that is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(impl.bin_dir / config["type"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # /bin/true does not read it
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    proc.stdin = None  # so that communicate() only reads
    return proc, started


def finish(proc: subprocess.Popen[bytes], started: float) -> Sample:
    out, err = proc.communicate()
    return Sample((time.perf_counter() - started) * 1000, proc.returncode, out, err)


def must(sample: Sample, what: str) -> Sample:
    if sample.code != 0:
        raise SystemExit(f"{what} failed ({sample.code}): {sample.stdout!r} {sample.stderr!r}")
    return sample


def with_prev(config: dict[str, Any], result: bytes) -> dict[str, Any]:
    return {**config, "prevResult": json.loads(result)}


# ---- the server -------------------------------------------------------------------


def start_server(work: Path, handler: str | None = None) -> tuple[subprocess.Popen[str], Path]:
    sock = work / ("echo.sock" if handler else "cni.sock")
    argv = [
        sys.executable,
        "-m",
        "node_plugin.server",
        "--socket",
        str(sock),
        "--del-queue",
        str(work / "queue"),
        "--log-level",
        "WARNING",
    ]
    if handler:
        argv += ["--handler", handler]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'operator'}"}
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"cni-server did not start: {proc.communicate()[1]}")
        time.sleep(0.05)
    return proc, sock


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


# ---- measurements -----------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rotated(impls: list[Impl], i: int) -> list[Impl]:
    k = i % len(impls)
    return impls[k:] + impls[:k]


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


def sequential(
    impls: list[Impl],
    configs: dict[str, dict[str, Any]],
    sandboxes: list[str],
    rounds: int,
    server_pid: int | None,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """Per implementation and verb: the wall times, and the mean CPU time per call
    (the plugin processes, plus the server's share for the shim)."""
    times: dict[str, dict[str, list[float]]] = {
        i.label: {"ADD": [], "CHECK": [], "DEL": []} for i in impls
    }
    cpu: dict[str, dict[str, float]] = {i.label: {"ADD": 0, "CHECK": 0, "DEL": 0} for i in impls}

    def timed(impl: Impl, verb: str, cfg: dict[str, Any], sb: str) -> Sample:
        serving = server_pid if impl.label == "shim+server" and server_pid else None
        before = children_cpu_ms() + (process_cpu_ms(serving) if serving else 0)
        sample = must(run_plugin(impl, verb, cfg, sb, sb), f"{impl.label} {verb}")
        after = children_cpu_ms() + (process_cpu_ms(serving) if serving else 0)
        times[impl.label][verb].append(sample.ms)
        cpu[impl.label][verb] += after - before
        return sample

    for r in range(rounds):
        results: dict[tuple[str, str], bytes] = {}
        for i, sb in enumerate(sandboxes):
            for impl in rotated(impls, i + r):
                results[impl.label, sb] = timed(impl, "ADD", configs[impl.label], sb).stdout
        for verb in ("CHECK", "DEL"):
            for i, sb in enumerate(sandboxes):
                for impl in rotated(impls, i + r):
                    timed(impl, verb, with_prev(configs[impl.label], results[impl.label, sb]), sb)
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


def profile_handler(
    config: dict[str, Any], sandbox: str, n: int = 30
) -> tuple[dict[str, float], str]:
    """node_plugin.api.handle in this process, with a reaper as in the server: its own time
    per verb, where it goes, and how long the reaper then waits for the kernel."""
    from node_plugin import api  # noqa: PLC0415 (not needed unless profiling)
    from node_plugin.kernel import rtnl  # noqa: PLC0415
    from node_plugin.server.reaper import Reaper  # noqa: PLC0415

    reaper = Reaper()
    reaper.start()

    env = {
        "CNI_CONTAINERID": "prof",
        "CNI_NETNS": f"/run/netns/{sandbox}",
        "CNI_IFNAME": "prof0",
        "CNI_PATH": str(REFERENCE_DIR),
    }

    def call(command: str, cfg: dict[str, Any], wait: bool = True) -> api.CniResponse:
        response = api.handle(
            api.CniRequest(
                plugin=config["type"],
                env={**env, "CNI_COMMAND": command},
                stdin=json.dumps(cfg).encode(),
                reaper=reaper,
            )
        )
        if response.exit_code != 0:
            raise SystemExit(f"profile {command} failed: {response.stdout!r}")
        if wait and command == "DEL" and not reaper.wait_idle(30):  # each call alone
            raise SystemExit("profile: the reaper did not finish")
        return response

    # Warm up: the server has everything imported and its sockets open.
    call("DEL", with_prev(config, call("ADD", config).stdout))
    wall: dict[str, list[float]] = {"ADD": [], "DEL": []}
    cpu: dict[str, list[float]] = {"ADD": [], "DEL": []}
    unlink: list[float] = []
    reaped: list[float] = []  # from DEL's start until the reaper's RTM_DELLINK returned
    # How long the reaper waits for the kernel to unregister the pair (an RCU barrier).
    original = rtnl.Rtnl.del_group
    spent = [0.0]

    def timed_del_group(self: rtnl.Rtnl, group: int) -> None:
        started = time.perf_counter()
        try:
            original(self, group)
        finally:
            spent[0] += time.perf_counter() - started

    rtnl.Rtnl.del_group = timed_del_group  # type: ignore[method-assign]
    try:
        for _ in range(n):
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            added = call("ADD", config)
            wall["ADD"].append((time.perf_counter() - wall_start) * 1000)
            cpu["ADD"].append((time.thread_time() - cpu_start) * 1000)
            del_config = with_prev(config, added.stdout)
            spent[0] = 0.0
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            response = api.handle(
                api.CniRequest(
                    plugin=config["type"],
                    env={**env, "CNI_COMMAND": "DEL"},
                    stdin=json.dumps(del_config).encode(),
                    reaper=reaper,
                )
            )
            wall["DEL"].append((time.perf_counter() - wall_start) * 1000)
            cpu["DEL"].append((time.thread_time() - cpu_start) * 1000)
            if response.exit_code != 0 or not reaper.wait_idle(30):
                raise SystemExit(f"profile DEL failed: {response.stdout!r}")
            reaped.append((time.perf_counter() - wall_start) * 1000)
            unlink.append(spent[0] * 1000)
    finally:
        rtnl.Rtnl.del_group = original  # type: ignore[method-assign]
    profiler = cProfile.Profile()
    for _ in range(n // 2):
        profiler.enable()
        added = call("ADD", config)
        call("DEL", with_prev(config, added.stdout), wait=False)
        profiler.disable()
        reaper.wait_idle(30)
    reaper.stop()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    out = {f"{verb}_p50": statistics.median(ms) for verb, ms in wall.items()}
    out |= {f"{verb}_cpu_p50": statistics.median(ms) for verb, ms in cpu.items()}
    out["DEL_unlink_p50"] = statistics.median(unlink)
    out["DEL_reaped_p50"] = statistics.median(reaped)
    return out, text.getvalue()


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


# ---- report ---------------------------------------------------------------------


TARGETS = {"ADD": 0.8, "DEL": 0.5}


def report(data: dict[str, Any]) -> str:
    seq = data["sequential"]
    labels = list(seq)
    ref = seq["reference"]
    lines = [
        f"cniwarden fast-path bench, {data['when']}, {data['sandboxes']} sandboxes x "
        f"{data['rounds']} rounds, ipMasq={data['masq']}, load avg {data['loadavg']}",
        "",
        "| verb | "
        + " | ".join(f"{label} p50 / p90" for label in labels)
        + " | "
        + " | ".join(f"{label} / ref (p50)" for label in labels[1:])
        + " | target |",
        "|---" * (2 * len(labels) + 1) + "|",
    ]
    for verb in ("ADD", "CHECK", "DEL"):
        cells = [
            f"{pct(seq[label][verb], 0.5):.1f} / {pct(seq[label][verb], 0.9):.1f} ms"
            for label in labels
        ]
        ratios = [
            f"{pct(seq[label][verb], 0.5) / pct(ref[verb], 0.5):.2f}x" for label in labels[1:]
        ]
        target = f"<= {TARGETS[verb]}x" if verb in TARGETS else ""
        lines.append(f"| {verb} | " + " | ".join(cells + ratios) + f" | {target} |")
    cpu = data["cpu"]
    lines += [
        "",
        "CPU time per call (mean; plugin processes, plus the server's threads for the shim):",
        "",
        "| verb | " + " | ".join(cpu) + " |",
        "|---" * (len(cpu) + 1) + "|",
    ]
    for verb in ("ADD", "CHECK", "DEL"):
        lines.append(
            f"| {verb} | " + " | ".join(f"{cpu[label][verb]:.1f} ms" for label in cpu) + " |"
        )
    if "gone" in data:
        gone = data["gone"]
        ref_gone = gone["reference"]
        lines += [
            "",
            "DEL alone (each after the previous one's veth pair is gone), from exec: until the "
            "runtime has its answer, and until the host veth is gone from the kernel's link "
            "list (polled; the server's reaper unregisters it after burying it):",
            "",
            "| | answered p50 / p90 | gone p50 / p90 | answered / ref answered (p50) "
            "| gone / ref gone (p50) |",
            "|---|---|---|---|---|",
        ]
        for label, t in gone.items():
            lines.append(
                f"| {label} | {pct(t['answered'], 0.5):.1f} / {pct(t['answered'], 0.9):.1f} ms "
                f"| {pct(t['gone'], 0.5):.1f} / {pct(t['gone'], 0.9):.1f} ms "
                f"| {pct(t['answered'], 0.5) / pct(ref_gone['answered'], 0.5):.2f}x "
                f"| {pct(t['gone'], 0.5) / pct(ref_gone['gone'], 0.5):.2f}x |"
            )
    par = data["parallel"]
    lines += [
        "",
        f"{data['parallel_n']} in parallel (wall time from the first exec: to the last exit; "
        "DEL also until the last host veth is gone from the link list):",
        "",
        "| verb | " + " | ".join(par) + " |",
        "|---" * (len(par) + 1) + "|",
    ]
    for verb, key in (("ADD", "ADD"), ("DEL", "DEL"), ("DEL, until gone", "DEL_gone")):
        if all(key in par[label] for label in par):
            lines.append(
                f"| {verb} | " + " | ".join(f"{par[label][key]:.0f} ms" for label in par) + " |"
            )
    if "rss" in data:
        r = data["rss"]
        lines += [
            "",
            f"cni-server memory: idle after warm-up {data['rss_idle_mb']:.1f} MiB; with "
            f"{r['attachments']} attachments VmRSS {r['rss_mb']:.1f} MiB, peak (VmHWM) "
            f"{r['hwm_mb']:.1f} MiB (target < 60 MiB)",
        ]
    if "floor" in data:
        f = data["floor"]
        lines += [
            "",
            f"floors (p50): exec of /bin/true {f['exec_p50']:.2f} ms; shim + socket + "
            f"server with a no-op handler {f['shim_noop_p50']:.2f} ms",
        ]
    if "handler" in data:
        h = data["handler"]
        lines += [
            f"node_plugin.api.handle in a warm process (p50): ADD {h['ADD_p50']:.2f} ms "
            f"({h['ADD_cpu_p50']:.2f} ms CPU), DEL {h['DEL_p50']:.2f} ms "
            f"({h['DEL_cpu_p50']:.2f} ms CPU); the reaper's RTM_DELLINK takes "
            f"{h['DEL_unlink_p50']:.2f} ms (the kernel's RCU barrier) and returns "
            f"{h['DEL_reaped_p50']:.2f} ms after DEL started"
        ]
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------


def standalone_dir(work: Path) -> Path | None:
    scripts = Path(sys.executable).parent
    directory = work / "standalone-bin"
    directory.mkdir()
    for name in ("cniwarden-bridge", "cniwarden-host-local"):
        if not (scripts / name).exists():
            return None
        (directory / name).symlink_to(scripts / name)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=50)
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
            }
            if server is not None:
                data["rss_idle_mb"] = rss_mb(server.pid)[0]
            data["sequential"], data["cpu"] = sequential(
                impls,
                configs,
                sandboxes[: args.sandboxes],
                args.rounds,
                server.pid if server is not None else None,
            )
            watch = HostLinks() if full else None
            if watch is not None:
                data["gone"] = del_until_gone(impls, configs, sandboxes[: args.sandboxes], watch)
            data["parallel"] = {
                impl.label: parallel(impl, configs[impl.label], sandboxes[: args.parallel], watch)
                for impl in impls
            }
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


if __name__ == "__main__":
    sys.exit(main())
