"""`python -m devtools.localcluster up|down|status|reap` (behind `make cluster-up/down`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cluster import ClusterError, attach, default_root, down_by_name, reap_orphans, up
from .layout import DEFAULT_RUNTIME, parse_runtimes
from .tiers import Tier


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devtools.localcluster")
    parser.add_argument("--root", type=Path, default=None, help="clusters root dir")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start a cluster; prints KUBECONFIG=<path> last")
    p_up.add_argument("--name", default="dev")
    p_up.add_argument("--tier", default=Tier.REAL_NODE.value, choices=[t.value for t in Tier])
    p_up.add_argument("--fake-nodes", type=int, default=3)
    p_up.add_argument(
        "--real-nodes",
        type=int,
        default=None,
        help="real nodes (default: one per --runtime entry, at least 1)",
    )
    p_up.add_argument(
        "--runtime",
        type=parse_runtimes,
        default=[DEFAULT_RUNTIME],
        metavar="LIST",
        help="each real node's container runtime, comma-separated in node order, the last "
        "repeating: containerd-1.6 (Debian's), containerd-1.7, containerd-2, crio",
    )
    p_up.add_argument(
        "--cni",
        default="none",
        choices=["none", "bridge"],
        help="none: leave the CNI conf dir empty (the operator fills it); "
        "bridge: write a bridge+host-local conflist so pods run at once",
    )
    p_up.add_argument(
        "--proxy-mode",
        default="iptables",
        choices=["iptables", "nftables"],
        help="kube-proxy's mode on every real node",
    )
    p_down = sub.add_parser("down", help="stop a cluster and remove all it created")
    p_down.add_argument("--name", default="dev")
    p_status = sub.add_parser("status", help="print a cluster's state as JSON")
    p_status.add_argument("--name", default="dev")
    sub.add_parser("reap", help="tear down clusters whose test session died")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root: Path = args.root or default_root()
    try:
        if args.command == "up":
            cluster = up(
                args.name,
                Tier(args.tier),
                root=root,
                fake_nodes=args.fake_nodes,
                real_nodes=args.real_nodes or len(args.runtime),
                cni=args.cni,
                proxy_mode=args.proxy_mode,
                runtimes=args.runtime,
            )
            timings = ", ".join(f"{k}={v}" for k, v in cluster.state.timings.items())
            print(f"localcluster: {cluster.name} up ({timings})", file=sys.stderr)
            print(f"KUBECONFIG={cluster.kubeconfig}", flush=True)
        elif args.command == "down":
            if down_by_name(args.name, root):
                print(f"localcluster: {args.name} is down", file=sys.stderr)
            else:
                print(f"localcluster: no cluster {args.name} under {root}", file=sys.stderr)
        elif args.command == "status":
            cluster = attach(args.name, root)
            report = {
                "name": cluster.name,
                "tier": cluster.tier.value,
                "kubeconfig": str(cluster.kubeconfig),
                "server": cluster.server,
                "nodes": cluster.node_names,
                "alive_pids": cluster.pids(),
                "rss_kib": cluster.memory_rss_kib(),
                "timings": cluster.state.timings,
            }
            print(json.dumps(report, indent=2))
        elif args.command == "reap":
            for name in reap_orphans(root):
                print(f"localcluster: reaped {name}", file=sys.stderr)
    except (ClusterError, ValueError, RuntimeError) as exc:
        print(f"localcluster: error: {exc}", file=sys.stderr)
        return 1
    return 0
