"""The control-plane tier: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Close to what controller-runtime's envtest runs, plus the controller manager
(namespace deletion, garbage collection, node CIDR allocation) and the
scheduler. Everything listens on loopback, except the API server when the
cluster has real nodes: it then listens on the cluster bridge address, which
only the cluster's node namespaces can reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import kubeconfig, procs
from .kube import Kubectl
from .layout import NODE_CIDR_MASK, POD_CIDR, SERVICE_CIDR, Layout
from .pki import CertificateAuthority, CertPair, service_account_keys
from .state import ClusterState, ProcessRecord
from .toolpaths import tool

READY_TIMEOUT = 120.0
SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class Pki:
    """Paths of every certificate of a cluster (fixed names under `pki/`)."""

    dir: Path

    @property
    def ca(self) -> CertPair:
        return CertPair(self.dir / "ca.crt", self.dir / "ca.key")

    def pair(self, stem: str) -> CertPair:
        return CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")

    @property
    def service_account(self) -> CertPair:
        return CertPair(self.dir / "sa.pub", self.dir / "sa.key")


def create_pki(layout: Layout, api_address: str) -> Pki:
    ca = CertificateAuthority.create(layout.pki_dir, layout.name)
    ca.issue(
        "apiserver",
        "kube-apiserver",
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ip_addresses=tuple(dict.fromkeys(("127.0.0.1", api_address, SERVICE_IP))),
        server=True,
    )
    ca.issue("admin", "kubernetes-admin", organizations=("system:masters",), client=True)
    ca.issue("controller-manager", "system:kube-controller-manager", client=True)
    ca.issue("scheduler", "system:kube-scheduler", client=True)
    ca.issue(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        organizations=("system:masters",),
        client=True,
    )
    # The aggregation layer's front proxy (also silences components that look
    # for the request-header CA in kube-system/extension-apiserver-authentication).
    ca.issue("front-proxy-client", "front-proxy-client", client=True)
    service_account_keys(layout.pki_dir)
    return Pki(layout.pki_dir)


def _record(state: ClusterState, record: ProcessRecord) -> ProcessRecord:
    state.processes.append(record)
    state.save()
    return record


def _healthz(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        status, body = kubeconfig.https_get(f"https://127.0.0.1:{port}/healthz")
        return status == 200 and body.strip() == "ok"

    return probe


def start_etcd(layout: Layout, state: ClusterState) -> float:
    ports = layout.ports
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    rec = _record(
        state,
        procs.start(
            "etcd",
            [
                str(tool("etcd")),
                f"--name={layout.name}",
                f"--data-dir={layout.etcd_data_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={layout.name}={peer}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            layout.logs_dir / "etcd.log",
        ),
    )

    def healthy() -> bool:
        body = kubeconfig.http_get_json(f"{client}/health")
        return isinstance(body, dict) and body.get("health") == "true"

    return procs.wait_ready(rec, healthy, timeout=READY_TIMEOUT, what=f"{client}/health")


def start_apiserver(
    layout: Layout,
    state: ClusterState,
    pki: Pki,
    address: str,
    egress_config: Path | None = None,
) -> float:
    """With `egress_config`, the API server reaches nodes, pods and Services (its
    "cluster" egress) through the proxy it names (`egress.py`)."""
    port = layout.ports.apiserver
    egress = [f"--egress-selector-config-file={egress_config}"] if egress_config else []
    serving = pki.pair("apiserver")
    kubelet_client = pki.pair("apiserver-kubelet-client")
    front_proxy = pki.pair("front-proxy-client")
    # A loopback address cannot be published as the `kubernetes` Service endpoint:
    # without real nodes nothing in the cluster needs it, so do not publish one.
    reconciler = "none" if address.startswith("127.") else "lease"
    rec = _record(
        state,
        procs.start(
            "kube-apiserver",
            [
                str(tool("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{layout.ports.etcd_client}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={port}",
                f"--cert-dir={layout.pki_dir / 'apiserver-generated'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.service_account.cert}",
                f"--service-account-signing-key-file={pki.service_account.key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--endpoint-reconciler-type={reconciler}",
                f"--requestheader-client-ca-file={pki.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                "--profiling=false",
                *egress,
                "--v=1",
            ],
            layout.logs_dir / "kube-apiserver.log",
        ),
    )
    admin = pki.pair("admin")

    def ready() -> bool:
        status, body = kubeconfig.https_get(
            f"https://{address}:{port}/readyz", ca=pki.ca.cert, client=admin
        )
        return status == 200 and body.strip() == "ok"

    return procs.wait_ready(rec, ready, timeout=READY_TIMEOUT, what="/readyz")


def write_kubeconfigs(layout: Layout, pki: Pki, server: str) -> dict[str, Path]:
    made = {}
    for stem, user in (
        ("admin", "kubernetes-admin"),
        ("controller-manager", "system:kube-controller-manager"),
        ("scheduler", "system:kube-scheduler"),
    ):
        path = layout.kubeconfig if stem == "admin" else layout.workdir / f"{stem}.kubeconfig"
        made[stem] = kubeconfig.write(
            path,
            cluster=f"cniwarden-{layout.name}",
            server=server,
            ca=pki.ca.cert,
            client=pki.pair(stem),
            user=user,
        )
    return made


def _start_kube_component(
    layout: Layout,
    state: ClusterState,
    name: str,
    *,
    port: int,
    kcfg: Path,
    flags: tuple[str, ...] = (),
) -> float:
    """kube-controller-manager or kube-scheduler: authenticated by `kcfg`, serving
    /healthz on 127.0.0.1:`port`, no leader election (one instance per cluster)."""
    rec = _record(
        state,
        procs.start(
            name,
            [
                str(tool(name)),
                f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                *flags,
                "--profiling=false",
                "--v=1",
            ],
            layout.logs_dir / f"{name}.log",
        ),
    )
    return procs.wait_ready(rec, _healthz(port), timeout=READY_TIMEOUT, what="/healthz")


def start_controller_manager(layout: Layout, state: ClusterState, pki: Pki, kcfg: Path) -> float:
    return _start_kube_component(
        layout,
        state,
        "kube-controller-manager",
        port=layout.ports.controller_manager,
        kcfg=kcfg,
        flags=(
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={POD_CIDR}",
            f"--node-cidr-mask-size={NODE_CIDR_MASK}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--root-ca-file={pki.ca.cert}",
            f"--service-account-private-key-file={pki.service_account.key}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki.ca.cert}",
            f"--cluster-signing-key-file={pki.ca.key}",
            "--controllers=*,bootstrapsigner,tokencleaner",
        ),
    )


def start_scheduler(layout: Layout, state: ClusterState, kcfg: Path) -> float:
    return _start_kube_component(
        layout, state, "kube-scheduler", port=layout.ports.scheduler, kcfg=kcfg
    )


def wait_default_service_account(
    kubectl: Kubectl, state: ClusterState, timeout: float = READY_TIMEOUT
) -> float:
    """Pods are refused until the controller manager made `default/default`."""
    started = time.monotonic()
    kcm = next(p for p in state.processes if p.name == "kube-controller-manager")

    def exists() -> bool:
        out = kubectl(
            "get", "serviceaccount", "default", "-n", "default", "-o", "name", check=False
        )
        return out.returncode == 0 and out.stdout.strip() == "serviceaccount/default"

    procs.wait_ready(kcm, exists, timeout=timeout, what="serviceaccount default/default")
    return time.monotonic() - started
