"""The agent's memory with a routed network: import the agent, run one host-gw pass, VmRSS.

Run by path in a fresh network namespace, with PYTHONPATH naming the tree to measure
(so two checkouts compare with one probe):

    PYTHONPATH=$TREE/operator:$TREE unshare -n .venv/bin/python bench/hostgw_rss.py

Prints one JSON line: RSS after the imports, after the pass, and whether pyroute2 loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    if links.stdout.count("\n") > 1:  # only lo: a namespace of our own
        raise SystemExit("run me in a fresh network namespace (unshare -n)")
    import cni_operator.agent  # noqa: F401, PLC0415  (what the agent process imports)
    from cni_operator.hostgw_node import HostGatewayNode  # noqa: PLC0415

    for argv in (
        ["link", "add", "n0", "type", "veth", "peer", "name", "n1"],
        ["addr", "add", "10.231.0.10/24", "dev", "n0"],
        ["link", "set", "n0", "up"],
        ["link", "set", "n1", "up"],
    ):
        subprocess.run(["ip", *argv], check=True)
    imported = rss_mib()
    node = HostGatewayNode("a")
    bodies = [
        {
            "metadata": {"name": name},
            "spec": {"podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }
        for name, ip, cidr in (
            ("a", "10.231.0.10", "10.244.0.0/24"),
            ("b", "10.231.0.11", "10.244.1.0/24"),
        )
    ]
    if hasattr(node, "set_peers"):  # the peers from the controller's CNINodeRoutes
        from cni_operator.hostgw import PeerNode  # noqa: PLC0415

        node.set_peers([PeerNode.from_node(body) for body in bodies])
    else:  # a tree from before it: every Node event
        for body in bodies:
            getattr(node, "on_node")("ADDED", body)  # noqa: B009
    ipam = {"type": "cniwarden-host-local", "ranges": [[{"subnet": "usePodCIDR"}]]}
    spec = {
        "priority": 10,
        "plugins": [{"type": "cniwarden-bridge", "ipam": ipam}],
        "routing": {"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]},
    }
    report = node.sync({"pods": spec})
    print(
        json.dumps(
            {
                "rss_after_import_mib": round(imported, 1),
                "rss_after_pass_mib": round(rss_mib(), 1),
                "routes": len((report or {}).get("routes", [])),
                "pyroute2_loaded": any(m.split(".")[0] == "pyroute2" for m in sys.modules),
            }
        )
    )


if __name__ == "__main__":
    main()
