"""A real node's kube-proxy (iptables mode by default, nftables on request), so
pods reach Services, the `kubernetes` Service above all: in-cluster clients (the chart's controller,
agents and hook Job) dial its ClusterIP, as on any cluster.

Separate from kubelet because it has its own identity (`system:kube-proxy`,
which the API server's bootstrap policy binds to `system:node-proxier`), its
own config and its own leftovers: its iptables chains, which live in the
node's network namespace and go with it. It changes no machine-wide tunable
(conntrack sizing and timeouts left as they are, no route_localnet).

A node namespace has no default route, so the Service range gets an on-link
route: a connect() to a ClusterIP needs some route before kube-proxy's DNAT in
OUTPUT rewrites the destination. On-link, not via the machine: until the DNAT
applies, such a packet only asks ARP on the nodes' own segment and never leaves.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from . import kubeconfig, procs
from .layout import POD_CIDR, SERVICE_CIDR, Layout, NodeLayout
from .pki import CertificateAuthority
from .state import ClusterState
from .toolpaths import tool

HEALTHZ_PORT = 10256
READY_TIMEOUT = 60.0


PROXY_MODES = ("iptables", "nftables")


def kube_proxy_config(
    node: NodeLayout, kubeconfig_path: Path, mode: str = "iptables"
) -> dict[str, object]:
    """iptables: the default of kube-proxy 1.33 and of kind; nftables: GA in 1.33,
    the same Services from one `table ip kube-proxy` (kernel >= 5.13, nft)."""
    if mode not in PROXY_MODES:
        raise ValueError(f"kube-proxy mode {mode!r}: use one of {', '.join(PROXY_MODES)}")
    sync = {"syncPeriod": "30s", "minSyncPeriod": "1s"}
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig_path)},
        "mode": mode,
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node.name,
        "bindAddress": node.ip,
        "healthzBindAddress": f"{node.ip}:{HEALTHZ_PORT}",
        "metricsBindAddress": f"{node.ip}:10249",
        "nodePortAddresses": [f"{node.ip}/32"],
        # Machine-wide knobs stay untouched: nf_conntrack_max (maxPerCore 0) and
        # the conntrack timeouts (0: leave as is) are global on this shared VM.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, **sync},
        "nftables": sync,
    }


def start_kube_proxy(layout: Layout, state: ClusterState, node: NodeLayout) -> None:
    directory = node.dir / "kube-proxy"
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load(layout.pki_dir)
    client = ca.issue(f"kube-proxy-{node.name}", "system:kube-proxy", client=True)
    kcfg = kubeconfig.write(
        directory / "kubeconfig",
        cluster=f"cniwarden-{layout.name}",
        server=state.server,
        ca=ca.pair.cert,
        client=client,
        user="system:kube-proxy",
    )
    config = directory / "config.yaml"
    proxy_config = kube_proxy_config(node, kcfg, state.proxy_mode)
    config.write_text(yaml.safe_dump(proxy_config, sort_keys=False))
    procs.run(
        ["ip", "route", "replace", SERVICE_CIDR, "dev", "eth0", "scope", "link"],
        netns=node.netns_path,
    )
    rec = procs.start(
        "kube-proxy",
        [str(tool("kube-proxy")), f"--config={config}", "--v=1"],
        Path(state.workdir) / "logs" / f"{node.name}-kube-proxy.log",
        netns=node.netns_path,
        mntns=node.mntns,
        utsns=node.utsns,
        node=node.name,
    )
    state.processes.append(rec)
    state.save()

    def healthy() -> bool:
        # 200 once the first sync of the Services' rules is done.
        return bool(kubeconfig.http_get_text(f"http://{node.ip}:{HEALTHZ_PORT}/healthz"))

    procs.wait_ready(rec, healthy, timeout=READY_TIMEOUT, what="kube-proxy /healthz")
