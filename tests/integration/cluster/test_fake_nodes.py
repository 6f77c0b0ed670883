"""The fake-nodes tier: kwok nodes are Ready, have a podCIDR and run pods."""

from __future__ import annotations

import ipaddress
import json
import secrets

import pytest

from devtools.localcluster import LocalCluster
from devtools.localcluster.kube import node_is_ready
from devtools.localcluster.pods import busybox_pod
from tests.integration.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster("fake-nodes")


def _nodes(cluster: LocalCluster) -> dict[str, dict[str, object]]:
    items = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n for n in items}


def test_fake_nodes_are_ready_with_distinct_pod_cidrs(cluster: LocalCluster) -> None:
    assert cluster.fake_node_names, "the fake-nodes tier starts with fake nodes"
    nodes = _nodes(cluster)
    cidrs = []
    for name in cluster.fake_node_names:
        node = nodes[name]
        assert node_is_ready(node), f"{name} is not Ready: {node['status']}"
        spec = node["spec"]
        assert isinstance(spec, dict)
        cidr = ipaddress.IPv4Network(spec["podCIDR"])
        assert cidr.prefixlen == 24
        assert cidr.subnet_of(ipaddress.IPv4Network("10.244.0.0/16"))
        cidrs.append(cidr)
    assert len(set(cidrs)) == len(cidrs)


def test_add_fake_nodes_for_scale(cluster: LocalCluster) -> None:
    before = set(cluster.node_names)
    added = cluster.add_fake_nodes(2)
    assert len(added) == 2
    assert not before & set(added)
    nodes = _nodes(cluster)
    for name in added:
        assert node_is_ready(nodes[name])
        spec = nodes[name]["spec"]
        assert isinstance(spec, dict)
        assert spec.get("podCIDR")


def test_pod_on_fake_node_gets_ip_from_its_pod_cidr(cluster: LocalCluster) -> None:
    node = cluster.fake_node_names[0]
    name = f"fake-{secrets.token_hex(4)}"
    pod = busybox_pod(name, node)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        cluster.kubectl(
            "wait", "--for=jsonpath={.status.phase}=Running", f"pod/{name}", "--timeout=60s"
        )
        pod_ip = wait_for(
            f"pod {name} to get its IP",
            lambda: cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}").stdout,
            timeout=30,
        )
        cidr = ipaddress.IPv4Network(_nodes(cluster)[node]["spec"]["podCIDR"])  # type: ignore[index]
        assert ipaddress.IPv4Address(pod_ip.strip()) in cidr
    finally:
        cluster.kubectl("delete", "pod", name, "--grace-period=0", "--force", check=False)
