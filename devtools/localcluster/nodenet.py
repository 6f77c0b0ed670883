"""A real node's network: the cluster bridge, the node's namespace and veth, and
the tooling's own routed bridge network (`cni=bridge`).

Separate from the daemons because it is plain kernel plumbing (ip, sysctl) that
needs neither containerd nor kubelet, and the teardown removes it by name.

    root netns:  lc-<id>-br  10.231.<slot>.1/24   (the API server listens here)
                   |-- lc-<id>-v0 ==veth== eth0 10.231.<slot>.10/24  in netns lc-<id>-n0
                   |-- lc-<id>-v1 ==veth== eth0 10.231.<slot>.11/24  in netns lc-<id>-n1

A node namespace has no default route: pods reach their node, the other nodes
and the API server, nothing beyond.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from . import hostres, procs
from .kube import Kubectl
from .layout import POD_CIDR, Layout, NodeLayout
from .readiness import node_status
from .state import ClusterState


def setup_bridge(layout: Layout, state: ClusterState) -> None:
    state.bridge = layout.bridge
    state.save()
    prefix = layout.node_subnet.prefixlen
    # Bridged node-to-node traffic must not go through the host's iptables.
    procs.run(
        ["ip", "link", "add", "name", layout.bridge, "type", "bridge", "nf_call_iptables", "0"]
    )
    procs.run(["ip", "addr", "add", f"{layout.bridge_ip}/{prefix}", "dev", layout.bridge])
    procs.run(["ip", "link", "set", "dev", layout.bridge, "up"])


def plumb_netns(layout: Layout, node: NodeLayout) -> None:
    """The node's network namespace, its eth0 on the cluster bridge, forwarding on."""
    netns = hostres.add_netns(node.netns)
    procs.run(
        [
            "ip",
            "link",
            "add",
            node.veth_host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns,
        ]
    )
    procs.run(["ip", "link", "set", "dev", node.veth_host, "master", layout.bridge, "up"])
    prefix = layout.node_subnet.prefixlen
    for argv in (
        ["ip", "link", "set", "dev", "lo", "up"],
        ["ip", "addr", "add", f"{node.ip}/{prefix}", "dev", "eth0"],
        ["ip", "link", "set", "dev", "eth0", "up"],
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
    ):
        procs.run(argv, netns=netns)


def bridge_conflist(
    pod_cidr: str, data_dir: Path, name: str = "localcluster", node_subnet: str | None = None
) -> dict[str, object]:
    """A plain bridge + host-local network over the node's podCIDR (reference plugins).

    With `node_subnet`, pods also route the nodes' subnet via their node: they answer
    the API server's egress proxy (in the first node, `egress.py`) from any node."""
    gateway = str(ipaddress.IPv4Network(pod_cidr).network_address + 1)
    routes = [{"dst": dst, "gw": gateway} for dst in (POD_CIDR, node_subnet) if dst]
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr, "gateway": gateway}]],
                    # Other nodes' pods via the node; still no default route. The
                    # gateway is explicit: CRI-O CHECKs after ADD, and the reference
                    # bridge's CHECK compares the result's route (gw) with the kernel's.
                    "routes": routes,
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_bridge_conflist(layout: Layout, node: NodeLayout, pod_cidr: str) -> Path:
    conflist = bridge_conflist(
        pod_cidr, node.cni_state_dir / "networks", node_subnet=str(layout.node_subnet)
    )
    target = node.cni_conf_dir / "10-localcluster.conflist"
    tmp = node.cni_conf_dir / ".10-localcluster.tmp"
    tmp.write_text(json.dumps(conflist, indent=2) + "\n")
    tmp.rename(target)
    return target


def route_pod_cidrs(state: ClusterState, kubectl: Kubectl) -> dict[str, str]:
    """A routed datapath between real nodes: in each node's namespace, a route to
    every other node's podCIDR via that node's IP on the cluster bridge.

    Only for the tooling's own `bridge` network; with `cni=none` the network
    (and its routes) is the business of whatever is under test.
    """
    cidrs: dict[str, str] = {}
    for rec in state.nodes:
        obj = node_status(kubectl, rec.name)
        spec = obj.get("spec") if obj else None
        if isinstance(spec, dict) and spec.get("podCIDR"):
            cidrs[rec.name] = str(spec["podCIDR"])
    for here in state.nodes:
        netns = hostres.NETNS_DIR / here.netns
        for there in state.nodes:
            if there.name != here.name and there.name in cidrs:
                procs.run(
                    ["ip", "route", "replace", cidrs[there.name], "via", there.ip], netns=netns
                )
    return cidrs
