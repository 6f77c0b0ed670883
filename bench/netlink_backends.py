"""Fast-path ADD and DEL with the hand-written rtnetlink client against pyroute2, side by side.

The question (issue 10): "use pyroute2 unless it costs more than 10% of fast-path ADD or
DEL p50". The real bridge plugin runs through `node_plugin.api.handle` in this one warm
process, as the resident cni-server runs it (DEL with a reaper, so it buries the veth pair
instead of waiting for the kernel's RCU barrier); only the netlink layer differs:
node_plugin.kernel.netlink (rtnl) or bench.pyroute2_netlink, swapped in per request.
Every sandbox gets one attachment from each backend, in an order that rotates per sandbox
and round, so machine noise hits both alike. Before timing, one attachment per backend
is compared with iproute2: both must leave the same kernel state, or the run stops.

    sudo .venv/bin/python -m bench.netlink_backends [--sandboxes 40] [--rounds 3]

Everything lives in namespaces the bench creates (a "host" namespace this process moves
into, plus the sandboxes) and is deleted at the end, even on failure. Prints a Markdown
table and writes it with the raw samples to bench/results/netlink_backends.json.
`run()` and `report()` are importable (e.g. by bench.fastpath).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import pyroute2_netlink
from bench.stats import percentile
from node_plugin import api
from node_plugin.kernel import netlink, netns, tombstones
from node_plugin.kernel.rtnl import Rtnl

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BACKENDS = ("rtnl", "pyroute2")
IFNAMES = {"rtnl": "rt0", "pyroute2": "pr0"}  # one attachment of each per sandbox
VERBS = ("ADD", "DEL")
CNI_VERSION = "1.1.0"
# What ADD and DEL call in node_plugin.kernel.netlink (and tombstones, for DEL).
SWAPPED = (
    "host_socket",
    "sandbox_socket",
    "get",
    "get_index",
    "brport",
    "names",
    "ensure_bridge",
    "create_veth",
    "create_veth_pair",
    "delete",
    "set_link",
    "set_port",
    "addresses",
    "add_address",
    "del_address",
    "add_route",
)
_RTNL = {name: getattr(netlink, name) for name in SWAPPED}
_RTNL_BURY = tombstones.bury


def use(backend: str) -> None:
    """Point the plugin's netlink layer at `backend` (module attributes, as it calls them)."""
    source: Any = pyroute2_netlink if backend == "pyroute2" else None
    for name in SWAPPED:
        setattr(netlink, name, getattr(source, name) if source else _RTNL[name])
    tombstones.bury = pyroute2_netlink.bury if source else _RTNL_BURY


class PendingTombstones:
    """The request's reaper: DEL buries, the bench unregisters the pair afterwards, untimed,
    so neither backend's DEL waits behind a reap of the other's."""

    def __init__(self) -> None:
        self.due = False

    def schedule(self) -> None:
        self.due = True


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@contextlib.contextmanager
def namespaces(tag: str, count: int) -> Iterator[tuple[str, list[str]]]:
    made: list[str] = []
    try:
        for name in [f"cwnb{tag}-host", *(f"cwnb{tag}-s{i}" for i in range(count))]:
            sh("ip", "netns", "add", name)
            made.append(name)
        yield made[0], made[1:]
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


class Bench:
    def __init__(self, tag: str, work: Path) -> None:
        self.reaper = PendingTombstones()
        self.config: dict[str, Any] = {
            "cniVersion": CNI_VERSION,
            "name": f"cwnb{tag}",
            "type": api.BRIDGE,
            "bridge": f"cwnb{tag}",
            "isGateway": True,
            "hairpinMode": True,
            "ipMasq": False,
            "ipam": {
                "type": api.HOST_LOCAL,
                "subnet": "10.213.0.0/16",
                "dataDir": str(work / "ipam"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        self.results: dict[tuple[str, str], bytes] = {}
        self.cni_path = str(work)

    def request(self, verb: str, backend: str, sandbox: str) -> api.CniRequest:
        config = dict(self.config)
        if verb == "DEL":
            config["prevResult"] = json.loads(self.results[backend, sandbox])
        env = {
            "CNI_COMMAND": verb,
            "CNI_CONTAINERID": f"{backend}-{sandbox}",
            "CNI_NETNS": f"/run/netns/{sandbox}",
            "CNI_IFNAME": IFNAMES[backend],
            "CNI_PATH": self.cni_path,
        }
        return api.CniRequest(api.BRIDGE, env, json.dumps(config).encode(), reaper=self.reaper)

    def timed(self, verb: str, backend: str, sandbox: str) -> float:
        request = self.request(verb, backend, sandbox)
        use(backend)
        try:
            started = time.perf_counter()
            response = api.handle(request)
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            use("rtnl")
        if response.exit_code != 0:
            raise SystemExit(f"{backend} {verb} in {sandbox} failed: {response.stdout!r}")
        if verb == "ADD":
            self.results[backend, sandbox] = response.stdout
        else:
            self.reap(f"{backend} DEL in {sandbox}")
        return elapsed

    def reap(self, what: str) -> None:
        """Unregisters the pair DEL buried; a DEL that deleted it itself (waiting for the
        kernel's RCU barrier) would not be the server's fast path, and stops the run."""
        if not self.reaper.due:
            raise SystemExit(f"{what} did not bury its veth pair")
        with Rtnl() as sock:
            tombstones.reap(sock)
        self.reaper.due = False


def kernel_state(host: str, sandbox: str, ifname: str) -> dict[str, Any]:
    """What an attachment left in the kernel, through iproute2, minus its random parts."""

    def ip(ns: str, *args: str) -> Any:
        return json.loads(sh("ip", "-n", ns, "-d", "-j", *args) or "[]")

    (cont,) = [x for x in ip(sandbox, "link", "show") if x["ifname"] == ifname]
    (veth,) = [x for x in ip(host, "link", "show") if x["ifindex"] == cont["link_index"]]
    port = veth["linkinfo"]["info_slave_data"]
    addrs = [
        (a["family"], a["prefixlen"], "broadcast" in a, a.get("scope"))
        for entry in ip(sandbox, "addr", "show", "dev", ifname)
        for a in entry["addr_info"]
        if a.get("scope") != "link"
    ]
    routes = [
        (r["dst"], "gateway" in r, r.get("protocol"), r.get("scope"))
        for r in ip(sandbox, "route", "show", "dev", ifname)
    ]
    return {
        "sandbox link": (cont["operstate"], cont["mtu"], cont["linkinfo"]["info_kind"]),
        "sandbox addresses": sorted(addrs),
        "sandbox routes": sorted(routes),
        "host veth": (veth["operstate"], veth["mtu"], veth.get("master")),
        "bridge port": (port["state"], port["hairpin"], port["isolated"]),
    }


def check_equivalent(bench: Bench, host: str, sandbox: str) -> dict[str, Any]:
    """One ADD and DEL per backend in `sandbox`; both must leave the same kernel state,
    and DEL must take the interface out of the sandbox."""
    states = {}
    for backend in BACKENDS:  # one after the other: both install the same default route
        bench.timed("ADD", backend, sandbox)
        states[backend] = kernel_state(host, sandbox, IFNAMES[backend])
        bench.timed("DEL", backend, sandbox)
        left = sh("ip", "-n", sandbox, "-o", "link", "show")
        if IFNAMES[backend] in left:
            raise SystemExit(f"{backend} DEL left {IFNAMES[backend]} in {sandbox}: {left}")
    if states["rtnl"] != states["pyroute2"]:
        raise SystemExit(f"the backends disagree after ADD: {json.dumps(states, indent=1)}")
    return states["rtnl"]


def rotated(i: int) -> tuple[str, ...]:
    return BACKENDS[i % 2 :] + BACKENDS[: i % 2]


def run(sandboxes: int = 40, rounds: int = 3, warmup: int = 3) -> dict[str, Any]:
    """The measurement; this process moves into a namespace of its own for good."""
    tag = secrets.token_hex(3)
    load_before = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="cwnb-") as tmp,
        namespaces(tag, sandboxes) as (host, sbs),
    ):
        netns.join(f"/run/netns/{host}")
        bench = Bench(tag, Path(tmp))
        state = check_equivalent(bench, host, sbs[0])
        for i in range(warmup):  # the first requests of each backend open sockets
            for verb in VERBS:
                for backend in BACKENDS:
                    bench.timed(verb, backend, sbs[i % len(sbs)])
        samples: dict[str, dict[str, list[float]]] = {b: {v: [] for v in VERBS} for b in BACKENDS}
        for r in range(rounds):
            for verb in VERBS:
                for i, sb in enumerate(sbs):
                    for backend in rotated(i + r):
                        samples[backend][verb].append(bench.timed(verb, backend, sb))
        pyroute2_netlink.close_host_socket()
    return {
        "sandboxes": sandboxes,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "kernel_state_checked": state,
        "samples_ms": samples,
        "python": sys.version.split()[0],
        "pyroute2": _version("pyroute2"),
    }


def _version(dist: str) -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version(dist)


def summary(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per verb: p50/p90 of each backend and the ratios pyroute2 / rtnl."""
    out: dict[str, dict[str, float]] = {}
    for verb in VERBS:
        row: dict[str, float] = {}
        for backend in BACKENDS:
            values = data["samples_ms"][backend][verb]
            row[f"{backend}_p50"] = percentile(values, 0.5)
            row[f"{backend}_p90"] = percentile(values, 0.9)
        row["ratio_p50"] = row["pyroute2_p50"] / row["rtnl_p50"]
        row["ratio_p90"] = row["pyroute2_p90"] / row["rtnl_p90"]
        out[verb] = row
    return out


def report(data: dict[str, Any]) -> str:
    rows = summary(data)
    n = data["sandboxes"] * data["rounds"]
    lines = [
        f"Fast-path netlink backends: node_plugin.api.handle in one warm process, "
        f"{data['sandboxes']} sandboxes x {data['rounds']} rounds ({n} samples per cell), "
        f"pyroute2 {data['pyroute2']}, load average "
        f"{data['load_before'][0]:.1f} -> {data['load_after'][0]:.1f}",
        "",
        "| verb | rtnl p50 / p90 | pyroute2 p50 / p90 | pyroute2 / rtnl p50 | p90 |",
        "|---|---|---|---|---|",
    ]
    for verb, row in rows.items():
        lines.append(
            f"| {verb} | {row['rtnl_p50']:.2f} / {row['rtnl_p90']:.2f} ms "
            f"| {row['pyroute2_p50']:.2f} / {row['pyroute2_p90']:.2f} ms "
            f"| **{row['ratio_p50']:.2f}x** | {row['ratio_p90']:.2f}x |"
        )
    worst = max(row["ratio_p50"] for row in rows.values())
    verdict = "within" if worst <= 1.10 else "over"
    lines += ["", f"pyroute2 costs {100 * (worst - 1):+.0f}% at p50: {verdict} the 10% budget."]
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    data = run(args.sandboxes, args.rounds)
    text = report(data)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "netlink_backends.json").write_text(
        json.dumps({**data, "summary": summary(data), "report": text}, indent=1)
    )
    out(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
