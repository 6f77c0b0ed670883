"""RSS of the agent (with N attached pods on its node) and of the controller (with every
Node of the cluster), this tree against git revision REV, interleaved rounds.

    CNIWARDEN_CLUSTER=scale .venv/bin/python -m bench.component_rss --before REV \\
        --attachments 100 --rounds 2 --seconds 45

The cluster should hold the Nodes to count (`make cluster-up TIER=fake-nodes
FAKE_NODES=100`). The agent's host root holds N host-local leases and N libcni result
cache files (what N pods leave on a node; the agent reads only those), and one
CNINetwork selects its node, so it reports them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.operator_rollout import a_cluster, kubectl_json, rss_kib
from bench.pod_cpu import Spawner, network_spec
from bench.trees import extract_tree

ROOT = Path(__file__).resolve().parents[1]
AGENT = ["-m", "cni_operator.cli", "agent"]


def plant_pods(root: Path, network: str, count: int) -> None:
    leases = root / "var/lib/cni/networks" / network
    results = root / "var/lib/cni/results"
    leases.mkdir(parents=True)
    results.mkdir(parents=True)
    for i in range(count):
        cid = f"{i:064x}"
        (leases / f"10.250.{i // 250}.{i % 250 + 2}").write_text(f"{cid}\r\neth0")
        cache = {"kind": "cniCacheV1", "containerId": cid, "ifName": "eth0", "networkName": network}
        (results / f"{network}-{cid}-eth0").write_text(json.dumps(cache))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", metavar="REV", required=True)
    parser.add_argument("--attachments", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=45.0)
    args = parser.parse_args()
    run_id = secrets.token_hex(2)
    work = Path(tempfile.mkdtemp(prefix="cw-rss-", dir="/tmp"))
    trees = {"before": extract_tree(args.before, work / "before-tree"), "after": ROOT}
    rows: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    spec = network_spec(run_id)
    name = spec["metadata"]["name"]
    with a_cluster() as cluster:
        node = cluster.add_fake_nodes(1)[0]
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("label", "node", node, f"cniwarden.io/bench={run_id}", "--overwrite")
        cluster.kubectl("apply", "-f", "-", input=json.dumps(spec))
        nodes = len(kubectl_json(cluster, "get", "nodes")["items"])
        try:
            for index in range(args.rounds):
                for label, tree in trees.items():
                    root = work / f"{label}-{index}"
                    plant_pods(root, name, args.attachments)
                    spawner = Spawner(cluster, work)
                    try:
                        agent = spawner.python(
                            f"agent-{label}",
                            tree,
                            [*AGENT, "--node-name", node, "--host-root", str(root)],
                        )
                        controller = spawner.python(
                            f"controller-{label}", tree, ["-m", "cni_operator.cli", "operator"]
                        )
                        time.sleep(args.seconds)
                        state = kubectl_json(cluster, "get", "cninodestate", node)
                        counts = [a["count"] for a in state["status"].get("attachments") or []]
                        if counts != [args.attachments]:
                            raise RuntimeError(f"{label}: the agent reports {counts}")
                        sample = (rss_kib(agent) / 1024, rss_kib(controller) / 1024)
                        rows[label].append(sample)
                        print(f"round {index} {label}: agent, controller {sample}", file=sys.stderr)
                    finally:
                        spawner.stop()
                        cluster.kubectl("delete", "cninodestate", node, check=False)
        finally:
            cluster.kubectl("delete", "cninetwork", name, "--wait=false", check=False)
            cluster.kubectl("delete", "node", node, check=False)
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"| | agent RSS ({args.attachments} attached pods) | controller RSS ({nodes} Nodes) |"
        "\n|---|---|---|"
    )
    for label, samples in rows.items():
        agent_mib = statistics.median(s[0] for s in samples)
        controller_mib = statistics.median(s[1] for s in samples)
        print(f"| {label} | {agent_mib:.1f} MiB | {controller_mib:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
