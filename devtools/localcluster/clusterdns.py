"""Cluster DNS for the real-node tier: CoreDNS as a real pod behind `kube-dns`.

What kubeadm deploys, with the image built here instead of pulled: a
Deployment in kube-system running the pinned CoreDNS (`make tools`) from a local
OCI image, the `kube-dns` Service at the Service range's tenth address (which
every kubelet's `clusterDNS` names), its RBAC and Corefile.

The Corefile has no `forward`: pods resolve cluster names only and no query
ever leaves the machine (names outside cluster.local get SERVFAIL/NXDOMAIN
at once). Like on kubeadm, the pods stay Pending until a CNI is installed.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from .images import Entry, write_oci_tarball
from .layout import IMAGE_REPO, SERVICE_CIDR
from .toolpaths import tool

COREDNS_VERSION = "v1.12.0"  # tools/versions.env COREDNS_VERSION
COREDNS_IMAGE = f"{IMAGE_REPO}/coredns:{COREDNS_VERSION}"
CLUSTER_DOMAIN = "cluster.local"
NAMESPACE = "kube-system"
NAME = "coredns"
HEALTH_PORT = 8080
READY_PORT = 8181

COREFILE = f""".:53 {{
    errors
    health :{HEALTH_PORT}
    ready :{READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
    loadbalance
}}
"""


def cluster_dns_ip(service_cidr: str = SERVICE_CIDR) -> str:
    """The kube-dns ClusterIP: the range's tenth address, as kubeadm picks it."""
    return str(ipaddress.IPv4Network(service_cidr).network_address + 10)


def build_coredns(out: Path, binary: Path | None = None) -> Path:
    """An OCI tarball holding only the static CoreDNS binary (and a passwd for nobody)."""
    data = (binary or tool("coredns")).read_bytes()
    entries = [
        Entry("coredns", data),
        Entry("etc", is_dir=True),
        Entry("etc/passwd", b"root:x:0:0:root:/:/coredns\nnobody:x:65534:65534::/:/\n", 0o644),
        Entry("etc/coredns", is_dir=True),
    ]
    config: dict[str, object] = {
        "Entrypoint": ["/coredns"],
        "Cmd": ["-conf", "/etc/coredns/Corefile"],
        "ExposedPorts": {"53/udp": {}, "53/tcp": {}},
    }
    return write_oci_tarball(out, COREDNS_IMAGE, entries, config)


def manifests(replicas: int = 2) -> list[dict[str, Any]]:
    """The objects kubeadm's CoreDNS addon creates, pointing at the local image."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": NAMESPACE}
    ports = [
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9153, "protocol": "TCP"},
    ]
    container = {
        "name": "coredns",
        "image": COREDNS_IMAGE,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": ports,
        "resources": {"requests": {"cpu": "10m", "memory": "30Mi"}},
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
        "livenessProbe": {
            "httpGet": {"path": "/health", "port": HEALTH_PORT},
            "initialDelaySeconds": 10,
            "failureThreshold": 5,
        },
        "readinessProbe": {"httpGet": {"path": "/ready", "port": READY_PORT}, "periodSeconds": 2},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ]  # fmt: skip
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, **meta},
            "data": {"Corefile": COREFILE},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "labels": labels, **meta},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                        # One per node where there are two, as kubeadm's anti-affinity prefers.
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "weight": 100,
                                        "podAffinityTerm": {
                                            "labelSelector": {"matchLabels": labels},
                                            "topologyKey": "kubernetes.io/hostname",
                                        },
                                    }
                                ]
                            }
                        },
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": NAME}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "labels": {**labels, "kubernetes.io/name": "CoreDNS"},
                **meta,
            },
            "spec": {
                "selector": labels,
                "clusterIP": cluster_dns_ip(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
                ],
            },
        },
    ]


def manifest_list() -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests()})
