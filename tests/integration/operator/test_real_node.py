"""The datapath: the agent on a real node (containerd + kubelet in the node's own
network namespace) writes the config containerd uses, installs our plugins from
the package, and holds an IPAM change while a real pod is attached; once the pod
is gone, the held change rolls out by itself."""

from __future__ import annotations

import ipaddress
import json
import secrets
import time
from pathlib import Path

import pytest

from devtools.localcluster import LocalCluster
from devtools.localcluster.pods import busybox_pod

from .conftest import real_node_spec, running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]


def node_ready(cluster: LocalCluster, name: str) -> bool:
    node = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def test_real_pod_uses_our_config_and_holds_the_switch(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node = cluster.real_nodes[0]
    suffix = secrets.token_hex(3)
    name, bridge = f"realnet-{suffix}", f"cwr{suffix}"
    pod_cidr = ipaddress.IPv4Network(
        cluster.kubectl("get", "node", node.name, "-o", "jsonpath={.spec.podCIDR}").stdout
    )
    spec = real_node_spec(node, bridge)
    roots = {node.name: node.host_root}
    with running_fleet(cluster, tmp_path, [node.name], roots) as fleet:
        fleet.apply(name, spec)
        fleet.wait(lambda: fleet.ready(name), "network Ready on the real node", timeout=60)
        state = fleet.node_state(node.name)
        assert state["runtimes"]["containerd"]["file"] == f"10-{name}.conflist"
        owned = {b["name"]: b for b in state["binaries"] if b["owned"]}
        assert {"cniwarden-bridge", "cniwarden-host-local"} <= set(owned)
        # loopback may already be there (same bytes, not ours): then it is left alone.
        assert (node.cni_bin_dir / "loopback").exists()
        assert "1.0.0" in owned["cniwarden-bridge"]["versions"]
        fleet.wait(lambda: node_ready(cluster, node.name), "kubelet reports the node Ready", 90)

        pod = f"bb-{suffix}"
        body = busybox_pod(pod, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        try:
            cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s")
            ip = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)["status"][
                "podIP"
            ]
            assert ipaddress.IPv4Address(ip) in pod_cidr
            fleet.wait(
                lambda: any(
                    a["network"] == name and a["count"] == 1
                    for a in fleet.node_state(node.name).get("attachments") or []
                ),
                "the pod's attachment in the node report",
            )
            conf = fleet.conf_dir(node.name) / f"10-{name}.conflist"
            before = conf.read_bytes()

            changed = json.loads(json.dumps(spec))
            changed["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.123.0.0/24"}]]
            fleet.apply(name, changed)
            blocked = fleet.wait(lambda: fleet.when(name, "SwitchBlocked"), "SwitchBlocked")
            assert "plugins[0].ipam.ranges" in blocked["message"]
            assert node.name in blocked["message"]
            time.sleep(1)
            assert conf.read_bytes() == before
        finally:
            cluster.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s", check=False)
        # Drained: the lease is released by DEL, the agent sees it and rolls out.
        fleet.wait(lambda: b"10.123.0.0/24" in conf.read_bytes(), "held change applied", 60)
        fleet.wait(lambda: fleet.ready(name), "Ready after the drain")
        assert fleet.condition(name, "SwitchBlocked")["status"] == "False"
        fleet.delete(name)
        assert not conf.exists()
        assert not (node.cni_bin_dir / "cniwarden-bridge").exists()
