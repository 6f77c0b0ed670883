"""End to end: the chart installed into a cluster, pods on two nodes, the guard and the gate.

Runs on kind when Docker and kind are present, else on the local cluster (real
nodes: containerd + kubelet + kube-proxy each in its own network and mount
namespace); see providers.py. Either way the chart runs as pods from the images
built from images/Dockerfile. The scenarios run in order on one installation;
the last two upgrade it (from the previous chart version, with traffic) and
uninstall it (the hook Job, then nodes as they were).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from devtools.localcluster.kube import node_ready
from devtools.localcluster.pods import busybox_pod
from devtools.localcluster.toolpaths import tool
from tests.e2e import previous, providers
from tests.e2e.providers import KindProvider, LocalProvider, Node, Provider, wait_for

PROVIDER = providers.choose()
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
if PROVIDER == "local":
    pytestmark.append(pytest.mark.cluster("real-node"))

# Node paths whose files must be exactly as before install once uninstalled.
NODE_DIRS = (
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/cni",
    "/run/cniwarden",
    "/var/lib/cniwarden",
)
ROUTE_PROTOCOL = 157


@pytest.fixture(scope="module")
def provider(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provider]:
    workdir = tmp_path_factory.mktemp("e2e")
    made: LocalProvider | KindProvider
    if PROVIDER == "local":
        made = LocalProvider(request.getfixturevalue("cluster"), workdir)
    else:
        made = KindProvider(workdir)
    try:
        made.add_nodes(2)
        yield made
    finally:
        made.close()


class Installed:
    def __init__(self, provider: Provider, notes: str, image_ids: dict[str, str]) -> None:
        self.p = provider
        self.notes = notes
        self.image_ids = image_ids
        self.network = f"pods-{provider.run_id}"
        self.file = f"10-{self.network}.conflist"
        self.pods: list[str] = []
        self.baseline: dict[str, dict[str, list[str]]] = {}

    def network_obj(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            self.p.kubectl("get", "cninetwork", self.network, "-o", "json").stdout
        )
        return result

    def condition(self, kind: str) -> dict[str, Any]:
        status = self.network_obj().get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})

    def node_state(self, node: str) -> dict[str, Any]:
        body = json.loads(self.p.kubectl("get", "cninodestate", node, "-o", "json").stdout)
        status: dict[str, Any] = body.get("status") or {}
        return status

    def ready(self) -> bool:
        obj = self.network_obj()
        cond = self.condition("Ready")
        return (
            cond.get("status") == "True"
            and cond.get("observedGeneration") == obj["metadata"]["generation"]
            and (obj.get("status") or {}).get("nodesReady") == len(self.p.nodes)
        )

    def pod_cidr(self, node: str) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(
            self.p.kubectl("get", "node", node, "-o", "jsonpath={.spec.podCIDR}").stdout
        )

    def start_pod(self, name: str, node: str, script: str, host_network: bool = False) -> None:
        body = busybox_pod(
            name,
            node,
            ["sh", "-c", script],
            labels={"cniwarden-e2e": self.p.run_id},
            grace_seconds=0,
            host_network=host_network,
            image=self.p.busybox_image,
            pull_policy=self.p.image_pull_policy,
        )
        self.pods.append(name)
        self.p.kubectl("apply", "-f", "-", input=json.dumps(body))

    def wait_pods(self, *names: str) -> dict[str, str]:
        self.p.kubectl(
            "wait",
            "--for=condition=Ready",
            *[f"pod/{n}" for n in names],
            "--timeout=120s",
            timeout=150,
        )
        ips = {}
        for name in names:
            pod = json.loads(self.p.kubectl("get", "pod", name, "-o", "json").stdout)
            ips[name] = pod["status"]["podIP"]
        return ips

    def exec(self, pod: str, script: str, check: bool = True) -> str:
        return self.p.kubectl("exec", pod, "--", "sh", "-c", script, check=check, timeout=60).stdout

    def delete_pods(self) -> None:
        if self.pods:
            self.p.kubectl(
                "delete",
                "pod",
                *self.pods,
                "--wait=true",
                "--timeout=90s",
                "--ignore-not-found",
                timeout=120,
            )
            self.pods = []


def node_files(node: Node) -> dict[str, list[str]]:
    return {d: node.files_under(d) for d in NODE_DIRS}


@pytest.fixture(scope="module")
def installed(provider: Provider) -> Iterator[Installed]:
    image_ids = provider.load_images()
    baseline = {n.name: node_files(n) for n in provider.nodes}
    for node in provider.nodes:  # no CNI config yet: kubelet keeps them NotReady
        assert not node_ready(provider.kubectl, node.name), f"{node.name} Ready before install"
    notes = provider.install(provider.base_values())
    state = Installed(provider, notes, image_ids)
    state.baseline = baseline
    try:
        yield state
    finally:
        state.delete_pods()


def routes(node: Node) -> list[str]:
    return [
        line.strip()
        for line in node.sh(f"ip -4 route show proto {ROUTE_PROTOCOL}").splitlines()
        if line.strip()
    ]


def seen(local: str, port: int, peer: str) -> str:
    """A busybox netstat line: the server at local:port sees a connection from `peer`."""
    v4 = r"(?:::ffff:)?"
    return rf"{v4}{re.escape(local)}:{port}\s+{v4}{re.escape(peer)}:\d+\s"


def has_route(node: Node, text: str, present: bool) -> bool:
    return (text in "\n".join(routes(node))) == present


def state_with_routes(installed: Installed, node: str) -> dict[str, Any] | None:
    state = installed.node_state(node)
    return state if (state.get("podRoutes") or {}).get("routes") else None


def no_leases(node: Node, network: str) -> bool:
    return not [f for f in node.listdir(f"/var/lib/cni/networks/{network}") if f[0].isdigit()]


# =================================================================== scenarios
def test_install_brings_the_nodes_ready(installed: Installed) -> None:
    p = installed.p
    assert "kubectl get cninetworks" in installed.notes
    for node in p.nodes:
        wait_for(
            functools.partial(node_ready, p.kubectl, node.name), f"node {node.name} Ready", 120
        )
    wait_for(installed.ready, f"CNINetwork {installed.network} Ready on both nodes", timeout=90)
    table = p.kubectl("get", "cninetworks", installed.network).stdout
    assert installed.network in table and "Ready" in table

    for node in p.nodes:
        other = next(n for n in p.nodes if n.name != node.name)
        state = wait_for(
            functools.partial(state_with_routes, installed, node.name),
            f"{node.name} reports its host-gw routes",
        )
        assert state["healthy"] is True, state.get("problems")
        assert state["runtimes"]["containerd"]["file"] == installed.file
        # The agent asked the node's runtime (CRI Version) and judges by its rules.
        assert state["runtime"]["identified"] is True, state["runtime"]
        assert state["runtimeVerdict"]["agrees"] is True, state["runtimeVerdict"]
        owned = {b["name"]: b for b in state["binaries"] if b.get("owned")}
        assert {"cniwarden-bridge", "cniwarden-host-local", "cniwarden-portmap"} <= set(owned)
        # hostPort: the example network's portmap, installed from the agent image and
        # verified against the sha256 pinned in images/cni-plugins.sha256.
        pinned = (ROOT / "images" / "cni-plugins.sha256").read_text().split()[0]
        assert owned["cniwarden-portmap"]["sha256"] == pinned
        # The static shim from the agent image, not a Python launcher: pods go
        # through the cni-server.
        agent = agent_pod(p, node.name)["metadata"]["name"]
        in_image = pod_python(
            p,
            agent,
            "agent",
            "import hashlib; print(hashlib.sha256(open("
            "'/usr/lib/cniwarden/cni-bin/cniwarden-bridge', 'rb').read()).hexdigest())",
        ).strip()
        assert owned["cniwarden-bridge"]["sha256"] == in_image
        assert (node.read("/opt/cni/bin/cniwarden-bridge") or b"")[:4] == b"\x7fELF"
        other_cidr = str(installed.pod_cidr(other.name))
        assert {"destination": other_cidr, "via": other.ip, "node": other.name} in state[
            "podRoutes"
        ]["routes"]
        assert any(r.startswith(f"{other_cidr} via {other.ip}") for r in routes(node))


def test_the_chart_runs_as_pods_of_the_images_built_here(installed: Installed) -> None:
    """Running and Ready pods of the built images (by image ID) under kubelet, with the
    chart's securityContext in force; each node turned Ready after its agent pod started."""
    p = installed.p
    (controller,) = p.pods("controller")
    assert_serving(p, controller, {"controller": installed.image_ids["controller"]})
    agents = {pod["spec"]["nodeName"]: pod for pod in p.pods("agent")}
    assert sorted(agents) == sorted(n.name for n in p.nodes)
    for node in p.nodes:
        pod = agents[node.name]
        assert_serving(p, pod, dict.fromkeys(("agent", "cni-server"), installed.image_ids["agent"]))
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0, init
        started = parse_time(container(pod, "agent")["state"]["running"]["startedAt"])
        ready_at = parse_time(ready_condition(p, node.name)["lastTransitionTime"])
        assert ready_at >= started, f"{node.name} Ready at {ready_at}, its agent started {started}"

    # The securityContext, as the runtime applied it (not as rendered): read-only
    # root filesystems; the agent's one capability (NET_ADMIN, bit 12), the
    # privileged cni-server's full set; the controller as 65532 with none.
    agent = agents[p.nodes[0].name]["metadata"]["name"]
    controller_name = controller["metadata"]["name"]
    assert process_facts(p, agent, "agent") == ("0", "0000000000001000", "read-only")
    uid, cap_eff, root_fs = process_facts(p, agent, "cni-server")
    assert uid == "0" and int(cap_eff, 16) & (1 << 21), cap_eff  # CAP_SYS_ADMIN among them
    assert root_fs == "writable"  # privileged: readOnlyRootFilesystem is not set
    assert process_facts(p, controller_name, "controller") == ("65532", "0" * 16, "read-only")


def agent_pod(p: Provider, node: str) -> dict[str, Any]:
    return next(pod for pod in p.pods("agent") if pod["spec"].get("nodeName") == node)


def pod_python(p: Provider, pod: str, container_name: str, code: str) -> str:
    return p.kubectl(
        "exec", "-n", p.namespace, pod, "-c", container_name, "--", "python", "-c", code
    ).stdout


FACTS = """
import os
status = dict(l.split(":", 1) for l in open("/proc/self/status"))
try:
    open("/e2e-probe", "w").close()
    os.unlink("/e2e-probe")
    fs = "writable"
except OSError:
    fs = "read-only"
print(os.getuid(), status["CapEff"].strip(), fs)
"""


def process_facts(p: Provider, pod: str, container_name: str) -> tuple[str, str, str]:
    """(uid, effective capabilities, root filesystem) of a process in the container."""
    uid, caps, fs = pod_python(p, pod, container_name, FACTS).split()
    return uid, caps, fs


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next(c for c in statuses if c["name"] == name)


def image_id_behind(p: Provider, pod: dict[str, Any], reference: str) -> str:
    """The image ID a CRI-O node holds under `reference` (CRI-O reports a container's
    image by the digest of the manifest skopeo wrote, not by the built image's ID)."""
    node = next(n for n in p.nodes if n.name == pod["spec"]["nodeName"])
    out = node.sh(
        f"{tool('crictl')} --runtime-endpoint unix:///run/crio/crio.sock --timeout 20s "
        f"inspecti -o json '{reference}'"
    )
    found: str = json.loads(out)["status"]["id"]
    return found if found.startswith("sha256:") else f"sha256:{found}"


def reported_image_id(
    p: Provider, pod: dict[str, Any], status: dict[str, Any], image_id: str
) -> str:
    """A container status's image ID, resolved to the image's ID on a CRI-O node."""
    reported: str = status["imageID"]
    if status.get("containerID", "").startswith("cri-o://") and reported != image_id:
        reported = image_id_behind(p, pod, reported)
    return reported


def is_image(reported: str, image_id: str) -> bool:
    # "sha256:<id>" (imported without a digest) or "<name>@sha256:<digest>" (kind).
    return reported == image_id or reported.endswith(f"@{image_id}")


def assert_serving(p: Provider, pod: dict[str, Any], images: dict[str, str]) -> None:
    """Every named container Running, Ready and of the given image ID; the pod Ready."""
    name = pod["metadata"]["name"]
    assert pod["status"]["phase"] == "Running", (name, pod["status"])
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", (name, ready)
    for container_name, image_id in images.items():
        c = container(pod, container_name)
        assert "running" in c["state"] and c["ready"] is True, (name, c)
        reported = reported_image_id(p, pod, c, image_id)
        assert is_image(reported, image_id), (name, container_name, reported, image_id)
        assert c["containerID"].startswith(("containerd://", "cri-o://")), (name, c["containerID"])


def container_log(p: Provider, pod: str, container_name: str) -> str:
    return p.kubectl("logs", "-n", p.namespace, pod, "-c", container_name).stdout


def parse_time(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ready_condition(p: Provider, node: str) -> dict[str, Any]:
    obj = json.loads(p.kubectl("get", "node", node, "-o", "json").stdout)
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


def test_pods_on_two_nodes_get_their_nodes_addresses_and_talk(installed: Installed) -> None:
    p = installed.p
    n0, n1 = p.nodes
    port = 20000 + secrets.randbelow(10000)
    # The server answers with its name and the connection as it sees it (the peer's address).
    peer = "echo pong-$(hostname); netstat -tn | grep ':{port} '"
    installed.start_pod("e2e-a1", n0.name, "exec sleep 3600")
    installed.start_pod("e2e-a2", n0.name, "exec sleep 3600")
    installed.start_pod(
        "e2e-b", n1.name, f'exec nc -ll -p 8080 -e sh -c "{peer.format(port=8080)}"'
    )
    installed.start_pod(
        "e2e-host1",
        n1.name,
        f'exec nc -ll -p {port} -e sh -c "{peer.format(port=port)}"',
        host_network=True,
    )
    ips = installed.wait_pods("e2e-a1", "e2e-a2", "e2e-b", "e2e-host1")
    a1, a2, b = ips["e2e-a1"], ips["e2e-a2"], ips["e2e-b"]
    assert ipaddress.IPv4Address(a1) in installed.pod_cidr(n0.name)
    assert ipaddress.IPv4Address(a2) in installed.pod_cidr(n0.name)
    assert ipaddress.IPv4Address(b) in installed.pod_cidr(n1.name)
    assert ips["e2e-host1"] == n1.ip

    # ICMP: across nodes both ways, on one node, and to both nodes.
    for source, target in (
        ("e2e-a1", b),
        ("e2e-b", a1),
        ("e2e-a1", a2),
        ("e2e-a1", n0.ip),
        ("e2e-a1", n1.ip),
        ("e2e-b", n0.ip),
    ):
        out = installed.exec(source, f"ping -c 2 -W 3 {target}")
        assert " 0% packet loss" in out, out

    # TCP request/response across nodes: pod to pod keeps the pod's address (no NAT).
    reply = installed.exec("e2e-a1", "echo hi | nc -w 5 " + b + " 8080")
    assert "pong-e2e-b" in reply, reply
    assert re.search(seen(b, 8080, a1), reply), reply
    # Pod to the other node: leaves the pod network, so it is masqueraded (routing.ipMasq).
    reply = installed.exec("e2e-a1", f"echo hi | nc -w 5 {n1.ip} {port}")
    assert "pong-" in reply, reply
    assert re.search(seen(n1.ip, port, n0.ip), reply), reply
    # Pod to its own node: delivered locally, never NATed.
    reply = installed.exec("e2e-b", f"echo hi | nc -w 5 {n1.ip} {port}")
    assert re.search(seen(n1.ip, port, b), reply), reply

    for node, ip in ((n0, a1), (n1, b)):
        # host-local's lease sits in the node's own store, written via the shim + cni-server.
        lease = node.read(f"/var/lib/cni/networks/{installed.network}/{ip}")
        assert lease is not None and lease.split(b"\r\n")[1] == b"eth0"
    server_log = container_log(p, agent_pod(p, n0.name)["metadata"]["name"], "cni-server")
    assert "cniwarden-bridge ADD" in server_log, server_log[-2000:]


# The chart's metrics ports (values.yaml metrics.ports).
AGENT_METRICS, SERVER_METRICS, CONTROLLER_METRICS = 9812, 9813, 9814
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(p: Provider, pod: str, port: int) -> Samples:
    """A component's /metrics through the API server's pod proxy (as Prometheus would
    reach the pod IP), parsed by prometheus_client's own parser."""
    text = p.kubectl(
        "get", "--raw", f"/api/v1/namespaces/{p.namespace}/pods/{pod}:{port}/proxy/metrics"
    ).stdout
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def served(samples: Samples, verb: str) -> float:
    """Successful requests of `verb` the cni-server answered, over its plugins."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "cniwarden_cni_request_duration_seconds_count"
        and dict(labels).get("verb") == verb
        and dict(labels).get("code") == "0"
    )


def test_metrics_of_every_component_move_as_pods_come_and_go(installed: Installed) -> None:
    """The cni-server's, agent's and controller's /metrics: ADD and DEL counts, the
    node's pool usage and the network's fullest-node usage follow pods created and
    deleted on one node."""
    p = installed.p
    labels = {"network": installed.network, "range_set": "0"}

    def used(node: str) -> float:
        pools = installed.node_state(node).get("ipPools") or []
        return max((x["used"] for x in pools if x.get("network") == installed.network), default=0)

    # The fullest node: the controller's usage is the fullest node's.
    node = max(p.nodes, key=lambda n: used(n.name)).name
    agent = agent_pod(p, node)["metadata"]["name"]
    (controller,) = [c["metadata"]["name"] for c in p.pods("controller")]

    def scrapes() -> tuple[Samples, Samples, Samples]:
        """The cni-server's, the agent's (both on `node`) and the controller's /metrics."""
        return (
            scrape(p, agent, SERVER_METRICS),
            scrape(p, agent, AGENT_METRICS),
            scrape(p, controller, CONTROLLER_METRICS),
        )

    def pod_network_pods() -> int:
        """Pods on `node` that hold an address of the pod network; none may be
        terminating (its lease's fate would move the baseline under the test)."""
        listed = p.kubectl(
            "get", "pods", "-A", "-o", "json", "--field-selector", f"spec.nodeName={node}"
        ).stdout
        pods = [x for x in json.loads(listed)["items"] if not x["spec"].get("hostNetwork")]
        leaving = [x["metadata"]["name"] for x in pods if x["metadata"].get("deletionTimestamp")]
        if leaving:
            raise ValueError(f"pods still terminating on {node}: {leaving}")
        return sum(1 for x in pods if x.get("status", {}).get("podIP"))

    def steady() -> tuple[Samples, Samples, Samples]:
        """The three scrapes once the agent's gauge, its report and the pods on the
        node agree (the report follows a new lease within the agent's next pass)."""
        server_m, agent_m, controller_m = scrapes()
        gauge = value(agent_m, "cniwarden_agent_pool_used_addresses", **labels)
        reported, pods = used(node), pod_network_pods()
        if not gauge == reported == pods:
            raise ValueError(f"gauge {gauge:g}, report {reported}, pods with an address {pods}")
        return server_m, agent_m, controller_m

    def observed(server_m: Samples, agent_m: Samples, controller_m: Samples) -> dict[str, float]:
        """What the waits compare, also named in their failure."""
        return {
            "ADD": served(server_m, "ADD"),
            "DEL": served(server_m, "DEL"),
            "used": value(agent_m, "cniwarden_agent_pool_used_addresses", **labels),
            "reported": used(node),
            "percent": value(
                controller_m, "cniwarden_controller_pool_usage_percent", network=installed.network
            ),
        }

    server0, agent0, controller0 = wait_for(
        steady, "metrics agreeing with the report and the pods", timeout=90
    )
    ready = value(controller0, "cniwarden_controller_networks", condition="Ready", status="True")
    assert ready >= 1, "the controller counts the Ready network"
    size = value(agent0, "cniwarden_agent_pool_size_addresses", **labels)
    assert size > 0
    used0 = value(agent0, "cniwarden_agent_pool_used_addresses", **labels)
    percent0 = value(
        controller0, "cniwarden_controller_pool_usage_percent", network=installed.network
    )
    adds0, dels0 = served(server0, "ADD"), served(server0, "DEL")
    count = 3  # > 1 % of a /24: the rounded-up percent moves
    names = [f"e2e-metrics{i}" for i in range(count)]
    for name in names:
        installed.start_pod(name, node, "exec sleep 3600")
    installed.wait_pods(*names)
    running = time.monotonic()

    def moved_up() -> tuple[Samples, Samples, Samples]:
        server_m, agent_m, controller_m = scrapes()
        seen = observed(server_m, agent_m, controller_m)
        up = (
            seen["ADD"] >= adds0 + count
            and seen["used"] == used0 + count
            and seen["percent"] > percent0
        )
        if not up:
            raise ValueError(f"want ADD >= {adds0 + count:g}, used == {used0 + count:g}, "
                             f"percent > {percent0:g}; saw {seen}")  # fmt: skip
        return server_m, agent_m, controller_m

    server1, agent1, controller1 = wait_for(moved_up, "metrics up with the pods", timeout=90)
    up_after = time.monotonic() - running
    p.kubectl(
        "delete", "pod", *names, "--wait=true", "--timeout=90s", "--ignore-not-found", timeout=120
    )
    installed.pods = [n for n in installed.pods if n not in names]
    deleted = time.monotonic()

    def moved_down() -> tuple[Samples, Samples, Samples]:
        server_m, agent_m, controller_m = scrapes()
        seen = observed(server_m, agent_m, controller_m)
        down = (
            seen["DEL"] >= dels0 + count and seen["used"] == used0 and seen["percent"] == percent0
        )
        if not down:
            raise ValueError(f"want DEL >= {dels0 + count:g}, used == {used0:g}, "
                             f"percent == {percent0:g}; saw {seen}")  # fmt: skip
        return server_m, agent_m, controller_m

    server2, agent2, controller2 = wait_for(moved_down, "metrics down with the pods", timeout=90)
    down_after = time.monotonic() - deleted
    assert served(server2, "ADD") >= served(server1, "ADD"), "a counter never goes down"

    def percent(m: Samples) -> str:
        got = value(m, "cniwarden_controller_pool_usage_percent", network=installed.network)
        return f"{got:g}"

    def pool(m: Samples) -> str:
        return f"{value(m, 'cniwarden_agent_pool_used_addresses', **labels):g}"

    def attached(m: Samples) -> str:
        return f"{value(m, 'cniwarden_agent_attachments', network=installed.network):g}"

    print(
        f"\nmetrics on {node} ({count} pods created, then deleted):"
        f"\n  cni-server ADD ok: {adds0:g} -> {served(server1, 'ADD'):g}"
        f"\n  cni-server DEL ok: {dels0:g} -> {served(server1, 'DEL'):g} -> "
        f"{served(server2, 'DEL'):g}"
        f"\n  agent pool used: {pool(agent0)} -> {pool(agent1)} -> {pool(agent2)} of {size:g}"
        f"\n  agent attachments: {attached(agent0)} -> {attached(agent1)} -> {attached(agent2)}"
        f"\n  controller pool usage %: {percent(controller0)} -> {percent(controller1)} -> "
        f"{percent(controller2)}"
        f"\n  metrics up {up_after:.1f} s after the pods ran, down {down_after:.1f} s after "
        "they were deleted"
    )


def patch_report_as(kubeconfig: Path, node: str, dry_run: bool = False) -> str:
    """What the agent does (Kube.patch_node_state_status), under another kubeconfig;
    returns the API server's refusal, or "" when the patch went through."""
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    api = kubernetes.client.CustomObjectsApi(client)
    try:
        api.patch_cluster_custom_object_status(
            "cniwarden.io",
            "v1alpha1",
            "cninodestates",
            node,
            {"status": {"healthy": False}},
            dry_run="All" if dry_run else None,
        )
    except ApiException as error:
        return f"{error.status}: {error.body}"
    finally:
        client.close()
    return ""


def test_an_agent_cannot_write_another_nodes_report(installed: Installed) -> None:
    """RBAC lets agents write CNINodeStates; the admission policy only their own node's."""
    p = installed.p
    if not isinstance(p, LocalProvider):
        pytest.skip("needs an agent's own token, which only the local provider holds")
    n0, n1 = p.local_nodes
    sa = f"{p.release}-cniwarden-agent"
    own = p.token_kubeconfig(sa, n0.name)
    refused = patch_report_as(own, n1.name)
    assert refused.startswith("403"), "an agent rewrote another node's report"
    assert f"only the CNINodeState of its own node ({n0.name}), not {n1.name}" in refused
    assert patch_report_as(own, n0.name, dry_run=True) == ""
    # A token that names no node (not a pod's token) writes no report at all.
    refused = patch_report_as(p.token_kubeconfig(sa), n0.name, dry_run=True)
    assert refused.startswith("403") and "a token not bound to a node" in refused


def test_host_gw_routes_follow_nodes_as_they_come_and_go(installed: Installed) -> None:
    p = installed.p
    n0, n1 = p.nodes
    gw = str(ipaddress.IPv4Interface(f"{n0.ip}/24").network.network_address + 250)
    name = f"e2e-ghost-{p.run_id}"
    cidr = "10.244.250.0/24"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }
    p.kubectl("create", "-f", "-", input=json.dumps(node))
    try:
        status = {"status": {"addresses": [{"type": "InternalIP", "address": gw}]}}
        p.kubectl(
            "patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status)
        )
        for n in (n0, n1):
            wait_for(
                functools.partial(has_route, n, f"{cidr} via {gw}", True),
                f"route to {cidr} on {n.name}",
                timeout=30,
            )
    finally:
        p.kubectl("delete", "node", name, "--ignore-not-found")
    for n in (n0, n1):
        wait_for(
            functools.partial(has_route, n, cidr, False),
            f"route to {cidr} gone from {n.name}",
            timeout=30,
        )
    # The other nodes' routes are untouched.
    assert any(str(installed.pod_cidr(n1.name)) in r for r in routes(n0))


def test_a_planted_shadow_file_is_reported(installed: Installed) -> None:
    p = installed.p
    node = p.nodes[1]
    shadow = f"00-e2e-shadow-{p.run_id}.conflist"
    conflist = {
        "cniVersion": "1.0.0",
        "name": "shadow",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "shd0",
                "ipam": {"type": "host-local", "subnet": "10.99.0.0/24"},
            }
        ],
    }
    node.write(f"/etc/cni/net.d/{shadow}", json.dumps(conflist).encode())
    try:
        cond = wait_for(
            lambda: (c := installed.condition("Shadowed")).get("status") == "True" and c,
            "Shadowed=True",
            timeout=30,
        )
        assert shadow in cond["message"] and node.name in cond["message"], cond
        state = installed.node_state(node.name)
        assert state["runtimes"]["containerd"]["file"] == shadow
        assert any(shadow in json.dumps(f) for f in state["shadowingFiles"]), state[
            "shadowingFiles"
        ]
        events = p.kubectl(
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            f"involvedObject.name={installed.network}",
            "-o",
            "json",
        ).stdout
        assert any(e["reason"] == "Shadowed" for e in json.loads(events)["items"])
    finally:
        node.remove(f"/etc/cni/net.d/{shadow}")
    wait_for(
        lambda: installed.condition("Shadowed").get("status") == "False",
        "Shadowed=False again",
        timeout=30,
    )
    wait_for(
        lambda: installed.node_state(node.name)["runtimes"]["containerd"]["file"] == installed.file,
        "our file wins again",
    )


def test_an_unsafe_change_is_refused_while_pods_are_attached(installed: Installed) -> None:
    p = installed.p
    n0, n1 = p.nodes
    if not installed.pods:
        installed.start_pod("e2e-a1", n0.name, "exec sleep 3600")
        installed.start_pod("e2e-b", n1.name, "exec sleep 3600")
        installed.wait_pods("e2e-a1", "e2e-b")
    before = {n.name: n.read(f"/etc/cni/net.d/{installed.file}") for n in p.nodes}
    assert all(before.values())
    original = installed.network_obj()["spec"]["plugins"][0]["bridge"]
    patch = [{"op": "replace", "path": "/spec/plugins/0/bridge", "value": f"cwz{p.run_id}"}]
    p.kubectl("patch", "cninetwork", installed.network, "--type=json", "-p", json.dumps(patch))
    try:
        # Each node's agent reports on its own pass: the condition turns True with the
        # first report and names the second node once that node has reported too.
        blocked = wait_for(
            lambda: (
                (c := installed.condition("SwitchBlocked")).get("status") == "True"
                and n0.name in c.get("message", "")
                and n1.name in c.get("message", "")
                and c
            ),
            "SwitchBlocked=True naming both nodes",
            timeout=30,
        )
        assert "plugins[0].bridge" in blocked["message"], blocked
        for n in p.nodes:
            assert n.read(f"/etc/cni/net.d/{installed.file}") == before[n.name], (
                "the node file changed"
            )
        # The API server itself refuses what it can decide: the network's CNI name is immutable.
        refused = p.kubectl(
            "patch",
            "cninetwork",
            installed.network,
            "--type=merge",
            "-p",
            '{"spec":{"networkName":"other"}}',
            check=False,
        )
        assert refused.returncode != 0 and "networkName" in refused.stderr, refused.stderr
        # Running pods keep working.
        ip_b = json.loads(p.kubectl("get", "pod", "e2e-b", "-o", "json").stdout)["status"]["podIP"]
        assert " 0% packet loss" in installed.exec("e2e-a1", f"ping -c 1 -W 3 {ip_b}")
    finally:
        patch = [{"op": "replace", "path": "/spec/plugins/0/bridge", "value": original}]
        p.kubectl("patch", "cninetwork", installed.network, "--type=json", "-p", json.dumps(patch))
    wait_for(
        lambda: installed.condition("SwitchBlocked").get("status") == "False",
        "SwitchBlocked=False",
        timeout=30,
    )
    wait_for(installed.ready, "Ready again", timeout=30)


PRE_STOP_SECONDS = 2  # the chart's cni-server preStop: sleep 2


@dataclass
class Rollout:
    """What a DaemonSet rollout under traffic did, for the assertions and the docs."""

    seconds: float = 0.0
    sent: int = 0
    received: int = 0
    most_nodes_without_a_ready_agent: int = 0
    windows: list[str] = field(default_factory=list)
    replayed: int = 0

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 1.0


def ready_agents(p: Provider) -> dict[str, dict[str, Any]]:
    """The agent pods that are Ready and not being deleted, by node."""
    out = {}
    for pod in p.pods("agent"):
        conditions = (pod.get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        if ready and not pod["metadata"].get("deletionTimestamp"):
            out[pod["spec"]["nodeName"]] = pod
    return out


def helm_in_background(action: Callable[[], str]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as error:  # re-raised by the test
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def roll_with_traffic(
    installed: Installed, action: Callable[[], str], agent_image: str, tag: str
) -> Rollout:
    """Run `action` (a helm upgrade) while a pod on node 0 pings a pod on node 1 five
    times a second. While a node's agent pod is gone (its cni-server down), a pod on
    that node is deleted (its DEL is queued by the shim) and a new one is created
    (ADD answered "try again", kubelet retries)."""
    p = installed.p
    n0, n1 = p.nodes
    installed.start_pod(f"{tag}-ping", n0.name, "exec sleep 3600")
    installed.start_pod(f"{tag}-echo", n1.name, "exec sleep 3600")
    victims = {n.name: f"{tag}-del-{i}" for i, n in enumerate(p.nodes)}
    for node, victim in victims.items():
        installed.start_pod(victim, node, "exec sleep 3600")
    ips = installed.wait_pods(f"{tag}-ping", f"{tag}-echo", *victims.values())
    installed.exec(
        f"{tag}-ping",
        f"setsid sh -c 'exec ping -q -i 0.2 {ips[f'{tag}-echo']} >/tmp/ping.out 2>&1' &",
    )
    wait_for(
        lambda: installed.exec(f"{tag}-ping", "pidof ping", check=False).strip(), "ping running"
    )
    report = Rollout()
    started = time.monotonic()
    thread, errors = helm_in_background(action)
    old = {n: pod["metadata"]["uid"] for n, pod in ready_agents(p).items()}
    newcomers: list[str] = []
    leaving: dict[str, float] = {}  # node -> when its old agent pod was seen terminating
    deadline = time.monotonic() + 600

    def replaced() -> bool:
        ready = ready_agents(p)
        return len(ready) == len(p.nodes) and all(
            pod["metadata"]["uid"] != old.get(node) for node, pod in ready.items()
        )

    # `helm upgrade --wait` returns once a DaemonSet has all but maxUnavailable pods
    # Ready: the last node may still be rolling, so the watch goes on until it is done.
    while thread.is_alive() or not replaced():
        assert time.monotonic() < deadline, f"rollout unfinished: {ready_agents(p)}"
        ready = ready_agents(p)
        report.most_nodes_without_a_ready_agent = max(
            report.most_nodes_without_a_ready_agent, len(p.nodes) - len(ready)
        )
        for pod in p.pods("agent"):
            if pod["metadata"].get("deletionTimestamp"):
                leaving.setdefault(pod["spec"]["nodeName"], time.monotonic())
        for node in list(victims):
            # The old agent pod's cni-server stops after its preStop (sleep 2); the new
            # pod's starts a few seconds later: a pod deleted now has its DEL queued.
            if node in leaving and time.monotonic() - leaving[node] > PRE_STOP_SECONDS + 1:
                report.windows.append(node)
                p.kubectl("delete", "pod", victims.pop(node), "--wait=false")
                newcomers.append(f"{tag}-new-{len(newcomers)}")
                installed.start_pod(newcomers[-1], node, "exec sleep 3600")
        time.sleep(0.2)
    thread.join()
    if errors:
        raise errors[0]
    report.seconds = round(time.monotonic() - started, 1)
    installed.exec(f"{tag}-ping", "kill -INT $(pidof ping)")
    summary = wait_for(
        lambda: re.search(
            r"(\d+) packets transmitted, (\d+) packets received",
            installed.exec(f"{tag}-ping", "cat /tmp/ping.out"),
        ),
        "ping's summary",
        timeout=10,
    )
    report.sent, report.received = int(summary.group(1)), int(summary.group(2))

    ready = ready_agents(p)
    assert sorted(ready) == sorted(n.name for n in p.nodes)
    for node, pod in ready.items():
        assert pod["metadata"]["uid"] != old.get(node), f"the agent pod on {node} was not replaced"
        assert_serving(p, pod, dict.fromkeys(("agent", "cni-server"), agent_image))
    # Pods created while their node's cni-server was down started once it was back.
    if newcomers:
        installed.wait_pods(*newcomers)
    # Pods deleted meanwhile: their DEL was queued and replayed (lease released).
    for victim in set(f"{tag}-del-{i}" for i in range(len(p.nodes))) - set(victims.values()):
        installed.pods.remove(victim)
        ip = ips[victim]
        owner = next(n for n in p.nodes if ipaddress.IPv4Address(ip) in installed.pod_cidr(n.name))
        lease = f"/var/lib/cni/networks/{installed.network}/{ip}"
        wait_for(
            functools.partial(lambda n, path: n.read(path) is None, owner, lease),
            f"the lease of {ip} on {owner.name} released",
            timeout=60,
        )
    logs = [container_log(p, ready[n]["metadata"]["name"], "cni-server") for n in report.windows]
    report.replayed = sum(log.count("replayed queued DEL") for log in logs)
    return report


def test_helm_upgrade_from_the_previous_version_rolls_node_by_node_under_traffic(
    installed: Installed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    p = installed.p
    commit, version = previous.previous_release()
    old = previous.checkout(commit, tmp_path_factory.mktemp("previous"))
    old_ids = p.load_images(old)
    installed.delete_pods()
    values = p.base_values()
    # The release goes back to the previous version first (a downgrade rolls too),
    # then forward to this one: both rollouts are measured.
    back = roll_with_traffic(
        installed,
        functools.partial(p.upgrade, values, old / "charts" / "cniwarden"),
        old_ids["agent"],
        "down",
    )
    installed.delete_pods()
    forward = roll_with_traffic(
        installed, functools.partial(p.upgrade, values), installed.image_ids["agent"], "up"
    )
    installed.delete_pods()
    for name, report in ((f"to {version}", back), ("to this version", forward)):
        print(
            f"\nhelm upgrade {name}: {report.seconds}s, ping {report.sent} sent, "
            f"{report.received} received ({report.loss:.2%} lost), at most "
            f"{report.most_nodes_without_a_ready_agent} node(s) without a Ready agent, "
            f"pods deleted and created while the agent was gone on {report.windows}, "
            f"{report.replayed} queued DEL(s) replayed"
        )
        assert report.sent >= 20, report
        assert report.loss < 0.01, report
        assert report.most_nodes_without_a_ready_agent <= 1, report
    assert back.windows or forward.windows, "no node was ever seen without its agent pod"
    assert back.replayed + forward.replayed >= 1, (back, forward)
    wait_for(installed.ready, "the network Ready after the upgrade", timeout=90)


def test_uninstall_cleans_the_nodes(installed: Installed) -> None:
    p = installed.p
    installed.delete_pods()
    for node in p.nodes:
        wait_for(
            functools.partial(no_leases, node, installed.network),
            f"leases on {node.name} released",
            timeout=60,
        )
    log = p.uninstall()
    # The pre-delete hook ran as a Job's pod of the controller image, on a node of
    # this run, and finished once every node had removed our files (helm uninstall
    # fails when the hook Job fails).
    hook = p.hook.pod
    assert hook, f"no pod of the hook Job was seen during helm uninstall\n{log}"
    assert hook["metadata"]["labels"]["job-name"].endswith("-uninstall"), hook["metadata"]
    assert hook["spec"]["nodeName"] in {n.name for n in p.nodes}
    (status,) = hook["status"]["containerStatuses"]
    controller_id = installed.image_ids["controller"]
    reported = reported_image_id(p, hook, status, controller_id)
    assert is_image(reported, controller_id), (reported, status)
    assert "every CNINetwork is gone" in p.hook.log, p.hook.log
    gone = p.kubectl("get", "cninetwork", installed.network, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    for node in p.nodes:
        after = node_files(node)
        before = installed.baseline[node.name]
        for directory in NODE_DIRS:
            extra = sorted(set(after[directory]) - set(before[directory]))
            # libcni's result cache and host-local's last-reserved marker belong to the
            # runtime and to pods that ran; nothing else may be left.
            extra = [f for f in extra if not f.startswith(("results/", "networks/"))]
            assert extra == [], f"{node.name}:{directory} still holds {extra}\n{log}"
        assert not [f for f in after["/opt/cni/bin"] if f.startswith("cniwarden-")]
        assert routes(node) == [], f"{node.name} keeps host-gw routes"
        table = node.sh("nft list tables 2>/dev/null || true")
        assert "cniwarden_hostgw" not in table, table
    releases = p.kubectl(
        "get", "secrets", "-n", p.namespace, "-l", "owner=helm", "-o", "name", check=False
    )
    assert p.release not in releases.stdout
