"""The real-node tier: pods really start and take their network from the CNI conf dir."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localcluster import LocalCluster, RealNode
from devtools.localcluster.clusterdns import cluster_dns_ip
from devtools.localcluster.kube import node_ready
from devtools.localcluster.pods import busybox_pod
from tests.integration.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster("real-node")

REFERENCE_PLUGINS = Path("/usr/lib/cni")


def _node_json(cluster: LocalCluster, name: str) -> dict[str, object]:
    node: dict[str, object] = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)
    return node


def _pod_cidr(cluster: LocalCluster, name: str) -> ipaddress.IPv4Network:
    spec = _node_json(cluster, name)["spec"]
    assert isinstance(spec, dict)
    return ipaddress.IPv4Network(spec["podCIDR"])


def _install_reference_plugin(node: RealNode, name: str) -> None:
    target = node.cni_bin_dir / name
    tmp = node.cni_bin_dir / f".{name}.tmp"
    shutil.copy2(REFERENCE_PLUGINS / name, tmp)
    os.replace(tmp, target)


@pytest.fixture
def bridge_network(cluster: LocalCluster) -> Iterator[tuple[RealNode, str, str]]:
    """A plain bridge + host-local conflist over the node's podCIDR, written first in order."""
    node = cluster.real_nodes[0]
    for plugin in ("bridge", "host-local", "loopback"):
        _install_reference_plugin(node, plugin)
    suffix = secrets.token_hex(3)
    net, bridge = f"itest-{suffix}", f"itb{suffix}"
    pod_cidr = _pod_cidr(cluster, node.name)
    conflist = {
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(pod_cidr)}]],
                    "dataDir": str(node.cni_state_dir / "networks"),
                },
            }
        ],
    }
    path = node.cni_conf_dir / f"00-{net}.conflist"
    tmp = node.cni_conf_dir / f".{net}.tmp"
    tmp.write_text(json.dumps(conflist))
    os.replace(tmp, path)
    try:
        wait_for(
            f"node {node.name} Ready with the bridge config",
            lambda: node_ready(cluster.kubectl, node.name),
        )
        yield node, net, bridge
    finally:
        path.unlink(missing_ok=True)
        # The bridge keeps the gateway address (the podCIDR's first): left behind, it
        # would shadow the next test's bridge over the same podCIDR.
        subprocess.run(
            ["nsenter", f"--net={node.netns}", "ip", "link", "del", "dev", bridge],
            capture_output=True,
            check=False,
        )


def test_busybox_pod_runs_with_an_ip_from_bridge_host_local(
    cluster: LocalCluster, bridge_network: tuple[RealNode, str, str]
) -> None:
    node, net, bridge = bridge_network
    name = f"bb-{secrets.token_hex(4)}"
    marker = f"hello-{secrets.token_hex(4)}"
    pod = busybox_pod(
        name, node.name, ["sh", "-c", f"echo {marker}; exec sleep 3600"], grace_seconds=1
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s")
        got = json.loads(cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        pod_ip = ipaddress.IPv4Address(got["status"]["podIP"])
        assert pod_ip in _pod_cidr(cluster, node.name)

        # The address is a host-local lease in the node's state dir, on our bridge.
        lease = node.cni_state_dir / "networks" / net / str(pod_ip)
        assert lease.exists(), f"no host-local lease {lease}"
        # The runtime's /var/lib/cni is the node's: libcni caches the result there.
        cached = list((node.cni_state_dir / "results").glob(f"{net}-*-eth0"))
        assert len(cached) == 1, cached
        gateway = subprocess.run(
            ["nsenter", f"--net={node.netns}", "ip", "-4", "-o", "addr", "show", "dev", bridge],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(next(_pod_cidr(cluster, node.name).hosts())) in gateway

        logs = cluster.kubectl("logs", name).stdout
        assert marker in logs
        inside = cluster.kubectl(
            "exec", name, "--", "sh", "-c", "ip -4 -o addr show eth0; ip route"
        )
        assert str(pod_ip) in inside.stdout
        resolv = cluster.kubectl("exec", name, "--", "cat", "/etc/resolv.conf").stdout
        assert f"nameserver {cluster_dns_ip()}" in resolv
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s", check=False)
    # CNI DEL ran on deletion: the lease is released.
    wait_for("the host-local lease to be released", lambda: not lease.exists(), timeout=30)


def test_pod_network_has_no_way_out(
    cluster: LocalCluster, bridge_network: tuple[RealNode, str, str]
) -> None:
    node, _, _ = bridge_network
    routes = subprocess.run(
        ["nsenter", f"--net={node.netns}", "ip", "-4", "route", "show", "default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert routes.strip() == "", f"node namespace has a default route: {routes}"


def test_node_is_isolated_in_its_namespace_and_reaches_the_api(cluster: LocalCluster) -> None:
    node = cluster.real_nodes[0]
    got = _node_json(cluster, node.name)
    status = got["status"]
    assert isinstance(status, dict)
    addresses = {a["type"]: a["address"] for a in status["addresses"]}
    assert addresses["InternalIP"] == node.ip
    info = status["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.33.")
    assert info["containerRuntimeVersion"].startswith("containerd://")
    # The runtime's CNI dirs are exactly <host_root>/etc/cni/net.d and <host_root>/opt/cni/bin.
    config = (Path(node.host_root).parent / "containerd" / "config.toml").read_text()
    assert f'conf_dir = "{node.cni_conf_dir}"' in config
    assert f'bin_dir = "{node.cni_bin_dir}"' in config
    assert node.host_root / "var/lib/cni" == node.cni_state_dir


def test_host_network_pod_sees_its_node_name_as_hostname(cluster: LocalCluster) -> None:
    """Each real node has its own UTS namespace: a hostNetwork pod shares it, as on a
    machine of its own, so its hostname is its node's name (upstream's "service
    endpoints using hostNetwork" spec expects that back from each endpoint)."""
    node = cluster.real_nodes[0]
    assert socket.gethostname() != node.name  # the machine itself keeps its own name
    name = f"hn-{secrets.token_hex(4)}"
    pod = busybox_pod(
        name,
        node.name,
        ["sh", "-c", "echo hostname=$(hostname); exec sleep 3600"],
        host_network=True,
        grace_seconds=1,
    )
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s")
        assert f"hostname={node.name}" in cluster.kubectl("logs", name).stdout
        # The runtime writes the pod's /etc/hostname from its own view, too.
        etc_hostname = cluster.kubectl("exec", name, "--", "cat", "/etc/hostname").stdout
        assert etc_hostname.strip() == node.name
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s", check=False)


def test_the_api_server_reaches_pod_ips_through_its_egress_proxy(
    cluster: LocalCluster, bridge_network: tuple[RealNode, str, str]
) -> None:
    """The API server (machine's root namespace, no route to pods) proxies to a pod's
    IP, as upstream's Proxy and DNS conformance specs need: its "cluster" egress goes
    through the HTTP CONNECT proxy in the first node's namespace."""
    node, _, _ = bridge_network
    name = f"web-{secrets.token_hex(4)}"
    marker = f"served-{secrets.token_hex(4)}"
    script = f"mkdir -p /www && echo {marker} > /www/index.html && exec httpd -f -p 8080 -h /www"
    pod = busybox_pod(name, node.name, ["sh", "-c", script], grace_seconds=1)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s")
        path = f"/api/v1/namespaces/default/pods/{name}:8080/proxy/index.html"
        answers: list[str] = []

        def served() -> bool:
            out = cluster.kubectl("get", "--raw", path, check=False)
            answers.append(out.stdout.strip() or out.stderr.strip())
            return answers[-1] == marker

        # Ready means started: httpd may take a moment to listen.
        try:
            wait_for(f"the API server's proxy to {path}", served, timeout=30)
        except pytest.fail.Exception:
            pytest.fail(f"{path} never served {marker}; last answer: {answers[-1:]}")
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=true", "--timeout=60s", check=False)
