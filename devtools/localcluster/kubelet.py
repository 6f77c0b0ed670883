"""A real node's kubelet: its configuration, client certificate and launch.

Separate from containerd because it talks to the API server (a node client
certificate, a kubeconfig), carries the machine quirks of this VM (cgroupfs,
cgroup v1, no oom_score_adj lowering) and has its own readiness (/healthz).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from . import hostres, kubeconfig, procs
from .clusterdns import cluster_dns_ip
from .layout import Layout, NodeLayout
from .pki import CertificateAuthority
from .state import ClusterState
from .toolpaths import tool

READY_TIMEOUT = 180.0


def kubelet_config(node: NodeLayout, ca_cert: Path) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": node.ip,
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "containerRuntimeEndpoint": f"unix://{node.runtime_socket}",
        "imageServiceEndpoint": f"unix://{node.runtime_socket}",
        "failSwapOn": False,
        "failCgroupV1": False,
        # Like kind: never garbage-collect images (they cannot be pulled back)
        # and never evict for disk pressure on a shared dev machine.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
        },
        "resolvConf": str(node.kubelet_dir / "resolv.conf"),
        "clusterDomain": "cluster.local",
        # CoreDNS behind kube-dns (clusterdns.py); pods with dnsPolicy Default
        # resolve via their own loopback (resolvConf), which fails fast.
        "clusterDNS": [cluster_dns_ip()],
        "podLogsDir": str(node.dir / "pod-logs"),
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        "rotateCertificates": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this VM's root lacks.
        "oomScoreAdj": 0,
    }


def start_kubelet(layout: Layout, state: ClusterState, node: NodeLayout) -> None:
    kdir = node.kubelet_dir
    kdir.mkdir(parents=True, exist_ok=True)
    (node.dir / "pod-logs").mkdir(parents=True, exist_ok=True)
    # Pods resolve through loopback only: no DNS traffic ever leaves the machine.
    (kdir / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")
    ca = CertificateAuthority.load(layout.pki_dir)
    client = ca.issue(
        f"kubelet-{node.name}",
        f"system:node:{node.name}",
        organizations=("system:nodes",),
        client=True,
    )
    kcfg = kubeconfig.write(
        kdir / "kubeconfig",
        cluster=f"cniwarden-{layout.name}",
        server=state.server,
        ca=ca.pair.cert,
        client=client,
        user=f"system:node:{node.name}",
    )
    config = kdir / "config.yaml"
    config.write_text(yaml.safe_dump(kubelet_config(node, ca.pair.cert), sort_keys=False))
    hostres.create_cgroup_root(node.cgroup_root)
    rec = procs.start(
        "kubelet",
        [
            str(tool("kubelet")),
            f"--config={config}",
            f"--kubeconfig={kcfg}",
            f"--root-dir={kdir / 'root'}",
            f"--cert-dir={kdir / 'pki'}",
            f"--hostname-override={node.name}",
            f"--node-ip={node.ip}",
            "--v=2",
        ],
        Path(state.workdir) / "logs" / f"{node.name}-kubelet.log",
        netns=node.netns_path,
        mntns=node.mntns,
        utsns=node.utsns,
        node=node.name,
    )
    state.processes.append(rec)
    state.save()

    def healthy() -> bool:
        with_status = kubeconfig.http_get_text(f"http://{node.ip}:10248/healthz")
        return with_status.strip() == "ok"

    procs.wait_ready(rec, healthy, timeout=READY_TIMEOUT, what="kubelet /healthz")
