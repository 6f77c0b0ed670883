"""The chart's readiness-taint policy on the real API server: an agent's token (its
ServiceAccount, bound to a node through the `authentication.kubernetes.io/node-name`
extra, impersonated here exactly as a projected token presents itself) may add and
remove `cniwarden.io/agent-not-ready` on its own Node, and nothing else."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from cni_operator.kube import JSON_PATCH
from cni_operator.readiness import TAINT_KEY
from kubernetes.client.exceptions import ApiException

from devtools.localcluster import LocalCluster
from tests.chartlib import render as render_chart

pytestmark = [pytest.mark.cluster("control-plane")]
RUN = secrets.token_hex(3)
NAMESPACE = f"cw-{RUN}"
RELEASE = f"tp{RUN}"
KEEP = {"key": "example.com/keep", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def policy(cluster: LocalCluster) -> Iterator[list[str]]:
    """The chart's agent role and taint policy under this run's release, and two Nodes
    (API objects only: no kubelet needs to run for admission)."""
    objects = render_chart(
        {"agent": {"readinessTaint": {"enabled": True}}}, release=RELEASE, namespace=NAMESPACE
    )
    wanted = [
        o
        for o in objects
        if o["metadata"]["name"].endswith("-own-node-taint")
        or (
            o["kind"] in ("ClusterRole", "ClusterRoleBinding")
            and o["metadata"]["name"] == f"{RELEASE}-cniwarden-agent"
        )
    ]
    assert {o["kind"] for o in wanted} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ClusterRole",
        "ClusterRoleBinding",
    }, [o["metadata"]["name"] for o in wanted]
    nodes = [f"tp-{RUN}-{i}" for i in range(2)]
    items = [
        *wanted,
        *(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": n},
                "spec": {"taints": [KEEP]},
            }
            for n in nodes
        ),
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": items})
    )
    try:
        yield nodes
    finally:
        for obj in reversed(items):
            cluster.kubectl(
                "delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False
            )


def agent_of(cluster: LocalCluster, node: str) -> kubernetes.client.CoreV1Api:
    """The API as the agent pod on `node` sees it."""
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-cniwarden-agent"
    client.default_headers["Impersonate-User"] = user
    client.default_headers["Impersonate-Group"] = "system:serviceaccounts"
    client.default_headers["Impersonate-Extra-authentication.kubernetes.io%2Fnode-name"] = node
    return kubernetes.client.CoreV1Api(client)


def attempt(api: kubernetes.client.CoreV1Api, node: str, patch: list[dict[str, Any]]) -> str | None:
    """None when the API server accepts the patch, else its refusal."""
    try:
        api.patch_node(node, patch, _content_type=JSON_PATCH, _request_timeout=30)
    except ApiException as error:
        return f"{error.status}: {error.body}"
    return None


def add_ours(taint_key: str = TAINT_KEY) -> list[dict[str, Any]]:
    return [
        {"op": "add", "path": "/spec/taints/-", "value": {"key": taint_key, "effect": "NoSchedule"}}
    ]


def test_an_agent_adds_and_removes_its_taint_on_its_own_node_only(
    cluster: LocalCluster, policy: list[str]
) -> None:
    mine, other = policy
    agent = agent_of(cluster, mine)
    # The policy loads asynchronously: wait until it refuses the other node's taint.
    deadline = time.monotonic() + 60
    while (refused := attempt(agent, other, add_ours())) is None:
        assert time.monotonic() < deadline, "the policy never took effect"
        taints = json.loads(cluster.kubectl("get", "node", other, "-o", "json").stdout)["spec"][
            "taints"
        ]
        cluster.kubectl(
            "patch",
            "node",
            other,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"taints": [t for t in taints if t["key"] != TAINT_KEY]}}),
        )
        time.sleep(0.5)
    assert "403" in refused and "only its own Node" in refused

    assert attempt(agent, mine, add_ours()) is None
    assert attempt(agent, mine, add_ours("example.com/other")) is not None
    label = [{"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]
    refused = attempt(agent, mine, label)
    assert refused is not None and "only adds or removes" in refused
    body = json.loads(cluster.kubectl("get", "node", mine, "-o", "json").stdout)
    index = next(i for i, t in enumerate(body["spec"]["taints"]) if t["key"] == TAINT_KEY)
    remove = [
        {"op": "test", "path": f"/spec/taints/{index}/key", "value": TAINT_KEY},
        {"op": "remove", "path": f"/spec/taints/{index}"},
    ]
    assert attempt(agent, mine, remove) is None
    after = json.loads(cluster.kubectl("get", "node", mine, "-o", "json").stdout)["spec"]["taints"]
    assert TAINT_KEY not in {t["key"] for t in after} and KEEP["key"] in {t["key"] for t in after}
