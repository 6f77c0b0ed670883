"""The control-plane tier is a real, working Kubernetes API."""

from __future__ import annotations

import json
import secrets

import pytest
from kubernetes import client, config

from devtools.localcluster import LocalCluster
from tests.integration.cluster.waiting import wait_for

pytestmark = pytest.mark.cluster("control-plane")


def test_version_is_pinned_minor(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert version["major"] == "1"
    assert version["minor"] == "33"
    assert version["gitVersion"].startswith("v1.33."), version
    assert "$Format" not in version["gitCommit"] + version["gitVersion"]


def test_crd_becomes_established_and_accepts_objects(cluster: LocalCluster) -> None:
    group = f"t{secrets.token_hex(4)}.example.com"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s"
        )
        good = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": {"size": 3},
        }
        cluster.kubectl("apply", "-f", "-", input=json.dumps(good))
        got = json.loads(cluster.kubectl("get", f"widgets.{group}", "w1", "-o", "json").stdout)
        assert got["spec"] == {"size": 3}
        # The schema is enforced by the API server: an invalid object is refused.
        bad = {**good, "metadata": {"name": "w2", "namespace": "default"}, "spec": {"size": 0}}
        refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert refused.returncode != 0
        assert "spec.size" in refused.stderr
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_namespace_deletion_completes(cluster: LocalCluster) -> None:
    ns = f"del-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "configmap", "c1", "-n", ns, "--from-literal=a=b")
    # A namespaced object with an ownerReference exercises the garbage collector too.
    owner = json.loads(cluster.kubectl("get", "configmap", "c1", "-n", ns, "-o", "json").stdout)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "c2",
            "namespace": ns,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "c1",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(child))
    cluster.kubectl("delete", "configmap", "c1", "-n", ns)
    wait_for(
        "garbage collection of the owned ConfigMap",
        lambda: cluster.kubectl("get", "configmap", "c2", "-n", ns, check=False).returncode != 0,
    )
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for(
        f"namespace {ns} to be gone",
        lambda: cluster.kubectl("get", "namespace", ns, check=False).returncode != 0,
        timeout=90,
    )


def test_admin_kubeconfig_is_self_contained(cluster: LocalCluster) -> None:
    text = cluster.kubeconfig.read_text()
    assert "certificate-authority-data" in text
    assert "client-key-data" in text
    assert cluster.kubeconfig.stat().st_mode & 0o077 == 0


def test_official_python_client_can_use_the_kubeconfig(cluster: LocalCluster) -> None:
    api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig)
    )
    try:
        items = client.CoreV1Api(api_client).list_namespace().items
        names = {ns.metadata.name for ns in items if ns.metadata is not None}
    finally:
        api_client.close()
    assert {"default", "kube-system"} <= names
