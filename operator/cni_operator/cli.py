"""`cniwarden`: a thin dispatcher. Each subcommand imports its module lazily, so
`cniwarden doctor` does not pay for kopf, and new subcommands (e.g.
`cni-server`) are one entry in COMMANDS plus one small function."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni_operator.api import BinarySourcePolicy


def _host_root(value: str | None) -> Path:
    return Path(value or os.environ.get("CNIWARDEN_HOST_ROOT") or "/")


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _sources(args: argparse.Namespace) -> BinarySourcePolicy:
    from cni_operator.api import BinarySourcePolicy, check_url_prefix  # noqa: PLC0415

    try:  # the flag's values are checked by argparse already; the env's are not
        prefixes = tuple(check_url_prefix(p) for p in args.binary_url_prefix or ())
    except ValueError as error:
        raise SystemExit(f"cniwarden: CNIWARDEN_BINARY_URL_PREFIXES: {error}") from None
    return BinarySourcePolicy(prefixes)


def cmd_operator(args: argparse.Namespace) -> int:
    from cni_operator import controller  # noqa: PLC0415

    _logging(args.verbose)
    controller.run(
        controller.ControllerSettings(
            kubeconfig=args.kubeconfig,
            stale_agent_seconds=args.stale_agent_seconds,
            liveness_endpoint=args.liveness,
            sources=_sources(args),
            metrics_address=args.metrics_address,
            migrations=args.migrations,
        )
    )
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from cni_operator import agent  # noqa: PLC0415
    from cni_operator.node.fetch import FetchLimits  # noqa: PLC0415

    _logging(args.verbose)
    node_name = args.node_name or os.environ.get("NODE_NAME")
    if not node_name:
        print("cniwarden agent: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    agent.run(
        agent.AgentSettings(
            node_name=node_name,
            host_root=_host_root(args.host_root),
            kubeconfig=args.kubeconfig,
            resync_seconds=args.resync_seconds,
            liveness_endpoint=args.liveness,
            sources=_sources(args),
            fetch_limits=FetchLimits(args.binary_fetch_timeout, args.binary_max_bytes),
            runtime_endpoint=args.runtime_endpoint,
            gc_interval_seconds=args.gc_interval_seconds,
            readiness_taint=args.readiness_taint,
            readiness_seconds=args.readiness_seconds,
            readiness_probe_seconds=args.readiness_probe_seconds,
            runtime=args.runtime,
            metrics_address=args.metrics_address,
        )
    )
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cni_operator import rollback  # noqa: PLC0415

    return rollback.main(
        args.network, to_revision=args.to_revision, kubeconfig=args.kubeconfig, dry_run=args.dry_run
    )


def cmd_gc(args: argparse.Namespace) -> int:
    from cni_operator import leakgc  # noqa: PLC0415

    return leakgc.main(
        _host_root(args.host_root),
        runtime_endpoint=args.runtime_endpoint,
        dry_run=args.dry_run,
        as_json=args.json,
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    from cni_operator import doctor  # noqa: PLC0415

    return doctor.main(
        _host_root(args.host_root),
        as_json=args.json,
        runtime=args.runtime,
        endpoint=args.runtime_endpoint,
        gc=args.gc,
        restore_last_good=args.restore_last_good,
        kubeconfig=args.kubeconfig,
        node_name=args.node_name,
        journal=not args.no_journal,
    )


def cmd_cni_server(args: argparse.Namespace) -> int:
    from node_plugin.server.cli import main as cni_server_main  # noqa: PLC0415

    return cni_server_main(args.server_args)


def _url_prefix(value: str) -> str:
    from cni_operator.api import check_url_prefix  # noqa: PLC0415

    try:
        return check_url_prefix(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = kind(value)
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} is not a positive number")
        return number

    return parse


def _add_sources(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get("CNIWARDEN_BINARY_URL_PREFIXES", "")
    parser.add_argument(
        "--binary-url-prefix",
        action="append",
        type=_url_prefix,
        default=env.split() or None,
        metavar="URL",
        help="spec.binaries[].source.url must start with one of these (repeat the flag; "
        "each an http(s) URL ending in '/'); none given: any http(s) URL. "
        "Env: CNIWARDEN_BINARY_URL_PREFIXES (space-separated)",
    )


def _add_kube(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--liveness",
        default=os.environ.get("CNIWARDEN_LIVENESS"),
        metavar="URL",
        help="serve kopf's health endpoint there, e.g. http://0.0.0.0:9810/healthz",
    )
    parser.add_argument(
        "--metrics-address",
        default=os.environ.get("CNIWARDEN_METRICS_ADDRESS", ""),
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there, e.g. 0.0.0.0:9812 (default: off)",
    )


def _add_runtime_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime-endpoint",
        default=os.environ.get("CNIWARDEN_RUNTIME_ENDPOINT") or None,
        metavar="PATH",
        help="the container runtime's CRI socket as the node names it (under --host-root), "
        "e.g. /run/containerd/containerd.sock; default: the first well-known socket that "
        "answers. Env: CNIWARDEN_RUNTIME_ENDPOINT",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cniwarden", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("operator", help="run the cluster controller")
    _add_kube(p)
    p.add_argument(
        "--stale-agent-seconds",
        type=float,
        default=float(os.environ.get("CNIWARDEN_STALE_AGENT_SECONDS", "120")),
        help="an agent silent this long no longer holds up a deletion",
    )
    p.add_argument(
        "--migrations",
        action="store_true",
        default=os.environ.get("CNIWARDEN_MIGRATIONS") == "1",
        help="run CNIMigrations (cordon, evict, switch, verify, uncordon; docs/migration.md)",
    )
    _add_sources(p)
    p.set_defaults(func=cmd_operator)

    p = sub.add_parser("agent", help="run the node agent for one node")
    _add_kube(p)
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"))
    p.add_argument("--host-root", help="prefix of /etc/cni/net.d, /opt/cni/bin, /var/lib/cni")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=float(os.environ.get("CNIWARDEN_RESYNC_SECONDS", "30")),
    )
    _add_sources(p)
    p.add_argument(
        "--binary-fetch-timeout",
        type=_positive(float),
        default=float(os.environ.get("CNIWARDEN_BINARY_FETCH_TIMEOUT", "120")),
        metavar="SECONDS",
        help="the whole download of one declared binary, redirects included",
    )
    p.add_argument(
        "--binary-max-bytes",
        type=_positive(int),
        default=int(os.environ.get("CNIWARDEN_BINARY_MAX_BYTES", str(256 * 1024 * 1024))),
        metavar="BYTES",
        help="the largest declared binary the agent reads or downloads",
    )
    _add_runtime_endpoint(p)
    p.add_argument(
        "--gc-interval-seconds",
        type=float,
        default=float(os.environ.get("CNIWARDEN_GC_INTERVAL_SECONDS", "60")),
        metavar="SECONDS",
        help="reclaim leaked leases this often (0: only report them)",
    )
    p.add_argument(
        "--readiness-taint",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("CNIWARDEN_READINESS_TAINT", "") in ("1", "true"),
        help="keep cniwarden.io/agent-not-ready:NoSchedule on this Node until its CNI "
        "answers STATUS ok (needs patch on nodes; env CNIWARDEN_READINESS_TAINT=1)",
    )
    p.add_argument(
        "--readiness-seconds",
        type=_positive(float),
        default=float(os.environ.get("CNIWARDEN_READINESS_SECONDS", "2")),
        metavar="SECONDS",
        help="judge CNI readiness this often",
    )
    p.add_argument(
        "--readiness-probe-seconds",
        type=float,
        default=float(os.environ.get("CNIWARDEN_READINESS_PROBE_SECONDS", "300")),
        metavar="SECONDS",
        help="with --readiness-taint, prove the config in use by a probe ADD + CHECK + DEL "
        "in a scratch network namespace (needs CAP_SYS_ADMIN): at the first verdict, on a "
        "config change, on every recovery, after a failure every 10 s, and once passed "
        "this often (0: no probe)",
    )
    p.add_argument(
        "--runtime",
        choices=("auto", "containerd", "crio"),
        default=os.environ.get("CNIWARDEN_RUNTIME", "auto"),
        help="judge the node (config and CNI readiness) by this runtime's rules (auto: the "
        "runtime that answers on its CRI socket; every rule set when none does)",
    )
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser(
        "gc", help="reclaim leased addresses whose sandbox the runtime no longer has (node)"
    )
    p.add_argument("--host-root", help="prefix of /etc/cni/net.d, /opt/cni/bin, /var/lib/cni")
    _add_runtime_endpoint(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be released")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("rollback", help="put a CNINetwork's earlier spec revision back")
    p.add_argument("network")
    p.add_argument("--to-revision", type=int, help="default: the newest that differs")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--dry-run", action="store_true", help="print the spec it would write")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("doctor", help="scan this node's CNI setup and print a fix per problem")
    p.add_argument("--host-root", help="prefix of /etc/cni/net.d, /opt/cni/bin, /var/lib/cni")
    p.add_argument("--json", action="store_true", help="print the scan as JSON")
    p.add_argument(
        "--runtime",
        choices=("auto", "containerd", "crio"),
        default="auto",
        help="judge the node by this runtime's rules (auto: the runtime that answers on its "
        "CRI socket; every rule set when none does)",
    )
    _add_runtime_endpoint(p)
    p.add_argument("--gc", action="store_true", help="reclaim the leaked leases it finds")
    p.add_argument(
        "--restore-last-good",
        action="store_true",
        help="write back each network's last applied config (no API server needed)",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="also read FailedCreatePodSandBox events, the agent's heartbeat and restarts",
    )
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="default: hostname")
    p.add_argument("--no-journal", action="store_true", help="skip the kubelet journal")
    p.set_defaults(func=cmd_doctor)

    # Its options belong to node_plugin.server.cli; main() hands them over unparsed.
    p = sub.add_parser("cni-server", help="serve the CNI plugins to the static shim (node)")
    p.set_defaults(func=cmd_cni_server, server_args=[])
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "operator": cmd_operator,
    "agent": cmd_agent,
    "doctor": cmd_doctor,
    "gc": cmd_gc,
    "rollback": cmd_rollback,
    "cni-server": cmd_cni_server,
}


# Left out of the controller image (images/Dockerfile, controller-venv): only a node
# runs the commands that need them.
NODE_ONLY_MODULES = frozenset({"grpc", "pyroute2"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["cni-server"]:
            return cmd_cni_server(argparse.Namespace(server_args=argv[1:]))
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except ModuleNotFoundError as error:
        if error.name not in NODE_ONLY_MODULES:
            raise
        print(
            f"cniwarden {argv[0]}: this command runs on a node and needs {error.name}, "
            "which this image (the controller's) leaves out: run it in the agent image",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
