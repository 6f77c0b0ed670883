"""The agent's pass around the reconcile (issue 11, item 4): whatever one pass
raises, host-gw is still synced with what the node last applied, the report is
published with its heartbeat and the failure as a problem (and an Event about
the node's CNINodeState), and the next try waits longer each time.

The agent's collaborators that talk to the API server and the kernel are replaced
by recorders here: what is tested is the agent's own control flow. The real
agent process against a real API server is in tests/integration/operator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from cni_operator.agent import Agent, AgentSettings, retry_delay
from cni_operator.reconcile import PassResult
from cni_operator.runtime_truth import RuntimeFacts

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


class RecordingKube:
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []

    def ensure_node_state(self, node: Any, name: str) -> dict[str, Any]:
        return {"kind": "CNINodeState", "metadata": {"name": name, "uid": "u1"}}

    def patch_node_state_status(self, name: str, status: dict[str, Any]) -> None:
        self.statuses.append(status)

    def post_event(self, obj: dict[str, Any], kind: str, reason: str, msg: str, _: str) -> None:
        self.events.append((obj["kind"], reason, msg))


class RecordingHostGateway:
    def __init__(self) -> None:
        self.synced: list[dict[str, Any]] = []

    def sync(self, applied: dict[str, Any]) -> dict[str, Any] | None:
        self.synced.append(dict(applied))
        return None

    def take_events(self) -> list[Any]:
        return []


def containerd_not_ready(version: str) -> RuntimeFacts:
    """What CRI Status says when the runtime found no usable network config."""
    return RuntimeFacts(
        endpoint="/run/containerd/containerd.sock",
        name="containerd",
        version=version,
        network_ready=False,
        network_reason="NetworkPluginNotReady",
        network_message="Network plugin returns error: cni plugin not initialized",
    )


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    made = Agent(AgentSettings("n1", tmp_path / "root", str(kubeconfig), heartbeat_seconds=0))
    made.kube = RecordingKube()  # type: ignore[assignment]
    made.host_gw = RecordingHostGateway()  # type: ignore[assignment]
    made.listed = True
    made._last_list = time.monotonic() + 3600  # no relist in these passes
    return made


def test_a_pass_that_raises_still_syncs_host_gw_and_publishes(agent: Agent) -> None:
    applied = {"podnet": {"priority": 10}}
    good = PassResult({"nodeName": "n1", "problems": [], "networks": []}, [], None, applied)
    outcomes: list[PassResult | Exception] = [good, RuntimeError("journal exploded"), good]

    def reconcile(networks: Any, node: Any) -> PassResult:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    agent.reconciler.reconcile = reconcile  # type: ignore[method-assign]
    kube: RecordingKube = agent.kube  # type: ignore[assignment]
    host_gw: RecordingHostGateway = agent.host_gw  # type: ignore[assignment]

    async def passes() -> None:
        await agent._pass()
        await agent._pass()
        assert agent.wake.is_set() is False  # the retry is scheduled, not immediate
        await agent._pass()

    asyncio.run(passes())
    assert host_gw.synced == [applied, applied, applied]
    failed = kube.statuses[1]
    assert failed["heartbeatTime"]
    problem = failed["problems"][0]
    assert problem["code"] == "AgentPassFailed"
    assert "RuntimeError: journal exploded" in problem["message"]
    assert ("CNINodeState", "AgentPassFailed") in [(k, r) for k, r, _ in kube.events]
    left = [p["code"] for p in kube.statuses[2]["problems"]]
    assert left == ["RuntimeUnidentified"], "the next good pass clears it (no runtime here)"


def test_retries_wait_longer_each_time() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 4, 7, 50)] == [1, 2, 4, 8, 60, 60]


def test_the_runtime_s_own_verdict_is_a_problem_and_one_event(agent: Agent) -> None:
    """CRI Status says the network is down while the model says healthy: the report
    is not healthy, names the runtime and its version, and one Event is posted."""
    healthy = {"file": "10-pods.conflist", "network": "pods", "healthy": True, "message": ""}
    status = {"nodeName": "n1", "problems": [], "networks": [], "healthy": True}
    status["runtimes"] = {"containerd": healthy, "crio": healthy}
    agent.reconciler.reconcile = lambda networks, node: PassResult(dict(status))  # type: ignore[method-assign]
    agent._cri_facts = containerd_not_ready("2.4.2")
    kube: RecordingKube = agent.kube  # type: ignore[assignment]

    async def passes() -> None:
        await agent._pass()
        await agent._pass()

    asyncio.run(passes())
    report = kube.statuses[-1]
    assert report["healthy"] is False
    assert report["runtime"]["summary"] == "containerd 2.4.2"
    assert report["runtime"]["judgedBy"] == ["containerd"]
    problem = report["problems"][0]
    assert problem["code"] == "RuntimeDisagrees"
    assert problem["message"].startswith(
        "runtime reports NetworkPluginNotReady: Network plugin returns error: cni plugin not "
        "initialized (CRI Status); our model predicted healthy"
    )
    events = [(k, r) for k, r, _ in kube.events]
    assert events == [("CNINodeState", "RuntimeDisagrees")], "one Event, not one per pass"


def test_the_first_listing_seeds_host_gw_from_the_projection_and_its_own_node(
    tmp_path: Path,
) -> None:
    """A restarted agent must know every peer before its first host-gw pass, or that
    pass removes the routes to the peers its watch has not delivered yet: it reads
    the controller's CNINodeRoutes and its own Node (never a list of every Node)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    made = Agent(AgentSettings("n1", tmp_path / "root", str(kubeconfig), heartbeat_seconds=0))
    routes = {
        "metadata": {"name": "cluster"},
        "spec": {
            "nodes": [
                {"name": "n1", "podCIDRs": ["10.244.1.0/24"], "internalIPs": ["10.0.0.1"]},
                {"name": "n2", "podCIDRs": ["10.244.2.0/24"], "internalIPs": ["10.0.0.2"]},
            ]
        },
    }
    own = {"metadata": {"name": "n1", "resourceVersion": "5"}, "spec": {"podCIDRs": []}}
    asked: list[str] = []

    class ListingKube(RecordingKube):
        def list_networks_with_version(self) -> tuple[int, list[dict[str, Any]]]:
            return 1, []

        def get_node(self, name: str) -> dict[str, Any] | None:
            asked.append(name)
            return own

        def get_node_routes(self) -> dict[str, Any] | None:
            return routes

    made.kube = ListingKube()  # type: ignore[assignment]
    made._relist()
    assert asked == ["n1"], "only its own Node"
    assert {n.name for n in made.host_gw.nodes()} == {"n1", "n2"}
    # Its own Node (fresher) wins over its line in the projection.
    assert next(n for n in made.host_gw.nodes() if n.name == "n1").pod_cidrs == ()
    assert made.node == own


def test_no_projection_yet_leaves_host_gw_peers_unknown(tmp_path: Path) -> None:
    """Before the controller publishes (an upgrade), the peers are unknown, not empty;
    a deleted projection makes them unknown again; another object is ignored."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    made = Agent(AgentSettings("n1", tmp_path / "root", str(kubeconfig), heartbeat_seconds=0))

    class ListingKube(RecordingKube):
        def list_networks_with_version(self) -> tuple[int, list[dict[str, Any]]]:
            return 1, []

        def get_node(self, name: str) -> dict[str, Any] | None:
            return None

        def get_node_routes(self) -> dict[str, Any] | None:
            return None

    made.kube = ListingKube()  # type: ignore[assignment]
    made._relist()
    assert not made.host_gw.peers_known
    published = {"metadata": {"name": "cluster"}, "spec": {"nodes": []}}
    made.wake.clear()
    made.on_node_routes("ADDED", published)
    assert made.host_gw.peers_known and made.wake.is_set()
    made.wake.clear()
    made.on_node_routes("MODIFIED", published)
    assert not made.wake.is_set(), "the same list wakes no pass"
    made.on_node_routes("MODIFIED", {"metadata": {"name": "other"}, "spec": {}})
    assert made.host_gw.peers_known
    made.on_node_routes("DELETED", published)
    assert not made.host_gw.peers_known


def test_own_node_heartbeats_and_older_copies_wake_nothing(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    made = Agent(AgentSettings("n1", tmp_path / "root", str(kubeconfig), heartbeat_seconds=0))

    def node(version: int, beat: str, cidr: str = "10.244.1.0/24") -> dict[str, Any]:
        return {
            "metadata": {"name": "n1", "uid": "u", "resourceVersion": str(version)},
            "spec": {"podCIDRs": [cidr]},
            "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": beat}]},
        }

    made.on_node("MODIFIED", node(10, "t1"))
    made.wake.clear()
    made.on_node("MODIFIED", node(11, "t2"))
    assert not made.wake.is_set(), "a heartbeat"
    made.on_node("MODIFIED", node(9, "t0", "10.244.9.0/24"))
    assert not made.wake.is_set() and made.node is not None
    assert made.node["metadata"]["resourceVersion"] == "11", "an older copy is ignored"
    made.on_node("MODIFIED", node(12, "t3", "10.244.7.0/24"))
    assert made.wake.is_set()
    made.wake.clear()
    made.on_node("MODIFIED", {"metadata": {"name": "n2"}})
    assert not made.wake.is_set() and made.node["metadata"]["name"] == "n1"


def test_status_writes_to_a_network_wake_no_pass(tmp_path: Path) -> None:
    """The controller rewrites a network's status as reports arrive; each write reaches
    every agent, and none changes what a pass reads. The newest copy is kept anyway."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    made = Agent(AgentSettings("n1", tmp_path / "root", str(kubeconfig), heartbeat_seconds=0))
    meta = {"name": "podnet", "uid": "u", "generation": 1, "resourceVersion": "5"}
    body: dict[str, Any] = {"metadata": meta, "spec": {"priority": 10}}
    made.on_network("ADDED", body)
    assert made.wake.is_set()
    made.wake.clear()
    written = {**body, "metadata": {**meta, "resourceVersion": "6"}, "status": {"nodesReady": 3}}
    made.on_network("MODIFIED", written)
    assert not made.wake.is_set(), "a status write"
    assert made.networks["podnet"]["metadata"]["resourceVersion"] == "6"
    made.on_network("MODIFIED", {**written, "metadata": {**meta, "generation": 2}})
    assert made.wake.is_set(), "a new generation"
    made.wake.clear()
    made.on_network("DELETED", written)
    assert made.wake.is_set() and "podnet" not in made.networks


def test_once_the_runtime_settled_its_word_is_published_without_a_pass(agent: Agent) -> None:
    """While net.d just changed, the runtime's NetworkReady=false is withheld (it may
    not have reloaded yet); once settled, the same report is judged again and
    published with the disagreement, and no reconcile pass runs for it."""
    healthy = {"file": "10-pods.conflist", "network": "pods", "healthy": True, "message": ""}
    status = {"nodeName": "n1", "problems": [], "networks": [], "healthy": True}
    status["runtimes"] = {"containerd": healthy}
    passes: list[int] = []

    def reconcile(networks: Any, node: Any) -> PassResult:
        passes.append(1)
        return PassResult(dict(status))

    agent.reconciler.reconcile = reconcile  # type: ignore[method-assign]
    agent._cri_facts = containerd_not_ready("1.7.27")
    agent._cri_asked_at = time.monotonic()
    agent._dirs_changed_at = agent._cri_asked_at  # net.d changed as the runtime was asked
    kube: RecordingKube = agent.kube  # type: ignore[assignment]
    asyncio.run(agent._pass())
    assert kube.statuses[-1]["runtimeVerdict"]["settling"] is True
    assert kube.statuses[-1]["healthy"] is True, "withheld while the runtime reloads"
    agent._cri_asked_at = agent._dirs_changed_at + 3.0  # asked again once settled
    agent._rejudge()
    assert passes == [1], "judging again needs no pass"
    report = kube.statuses[-1]
    assert report["runtimeVerdict"]["settling"] is False
    assert report["healthy"] is False
    assert [p["code"] for p in report["problems"]] == ["RuntimeDisagrees"]
    assert [r for _, r, _ in kube.events] == ["RuntimeDisagrees"]
