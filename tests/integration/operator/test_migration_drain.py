"""CNIMigration's node steps against a real kube-apiserver, kube-controller-manager
(the disruption controller) and scheduler, with kwok nodes running the pods:
cordon, evict through the Eviction API with a PodDisruptionBudget that allows one
disruption at a time, then a switch that never completes (these nodes have no
agent) rolled back: label removed, node uncordoned, the cause in the timeline."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cni_operator.kube import Kube
from cni_operator.migration.plan import SWITCH_LABEL
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import NodeRecord, Step, start
from cni_operator.migration_run import NodeDriver

from devtools.localcluster import LocalCluster
from tests.integration.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster("fake-nodes")]
RUN = secrets.token_hex(3)
PIN = f"cniwarden.io/migration-test-{RUN}"
REPLICAS, MIN_AVAILABLE = 3, 2
TO = f"cw-mig-{RUN}"


def workload(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "web"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {PIN: "yes"},
                        "containers": [{"name": "web", "image": "registry.invalid/web:1"}],
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"minAvailable": MIN_AVAILABLE, "selector": {"matchLabels": labels}},
        },
    ]


def pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def node(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout))


@pytest.fixture
def setup(cluster: LocalCluster) -> Iterator[tuple[str, str, str]]:
    """Two kwok nodes of this test's own; the workload's 3 pods all on the first.
    The second is opened to them by the test, once the PDB has refused evictions."""
    first, second = cluster.add_fake_nodes(2)
    namespace = f"mig-{RUN}"
    try:
        cluster.kubectl("label", "node", first, f"{PIN}=yes")
        for obj in workload(namespace):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
        wait_for(
            f"{REPLICAS} ready pods on {first}",
            lambda: (
                sum(
                    ready(p) and p["spec"].get("nodeName") == first
                    for p in pods(cluster, namespace)
                )
                == REPLICAS
            ),
        )
        wait_for(
            "the PDB to allow one disruption",
            lambda: (
                json.loads(
                    cluster.kubectl("get", "pdb", "web", "-n", namespace, "-o", "json").stdout
                )["status"].get("disruptionsAllowed")
                == REPLICAS - MIN_AVAILABLE
            ),
        )
        yield first, second, namespace
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for name in (first, second):
            cluster.kubectl("uncordon", name, check=False)
            cluster.kubectl("label", "node", name, f"{PIN}-", f"{SWITCH_LABEL}-", check=False)


def test_cordon_evict_respecting_the_pdb_then_roll_back_and_uncordon(
    cluster: LocalCluster, setup: tuple[str, str, str]
) -> None:
    first, second, namespace = setup
    skew = [0.0]  # seconds added to the driver's next clock reading, once

    def clock() -> float:
        """Makes the step that reads it next (the switch, below) time out now."""
        now, skew[0] = time.time() + skew[0], 0.0
        return now

    driver = NodeDriver(Kube(str(cluster.kubeconfig)), clock=clock)
    spec = MigrationSpec.model_validate(
        {
            "from": {"networkName": "bridge-net"},
            "to": {"cniNetwork": TO},
            "drain": {"timeoutSeconds": 600},
        }
    )
    facts, plan, _ = driver.observe(first, TO)
    assert (facts.unschedulable, facts.pods_to_evict, len(plan.evict)) == (False, 3, 3)
    record = start(NodeRecord(first, 0), facts, "2026-01-01T00:00:00Z")
    record = NodeRecord.from_status(record.to_status())

    out = driver.drive(spec, record, TO, TO)
    assert node(cluster, first)["spec"].get("unschedulable") is True
    assert out.record.step is Step.EVICT
    # One disruption allowed, and the evicted pod's replacement cannot run anywhere
    # yet: the first eviction passes, the other two are refused (429).
    assert "evictions refused by a PodDisruptionBudget" in out.waiting, out.waiting
    assert out.waiting.count("disruption budget") == REPLICAS - 1, out.waiting
    on_first = [p for p in pods(cluster, namespace) if p["spec"].get("nodeName") == first]
    assert sum(not p["metadata"].get("deletionTimestamp") for p in on_first) >= REPLICAS - 1
    cluster.kubectl("label", "node", second, f"{PIN}=yes")

    def drained() -> bool:
        nonlocal out
        live = [p for p in pods(cluster, namespace) if ready(p)]
        assert len(live) >= MIN_AVAILABLE, "more pods down than the PDB allows"
        out = driver.drive(spec, out.record, TO, TO)
        return out.record.step is not Step.EVICT

    wait_for("node drained through the Eviction API", drained, timeout=180)
    reached: Step = out.record.step  # (declared: `drained` moved it on since the check above)
    assert reached is Step.SWITCH, out
    left = [p for p in pods(cluster, namespace) if p["spec"].get("nodeName") == first]
    assert left == []
    assert sum(ready(p) for p in pods(cluster, namespace)) >= MIN_AVAILABLE
    assert node(cluster, first)["metadata"]["labels"].get(SWITCH_LABEL) == TO
    assert node(cluster, second)["spec"].get("unschedulable") is None

    # No agent runs on a kwok node: the new network is never reported, the switch
    # times out, and the node is rolled back.
    skew[0] = spec.drain.timeoutSeconds + 1.0

    def rolled_back() -> bool:
        nonlocal out
        out = driver.drive(spec, out.record, TO, TO)
        return out.record.step is Step.ROLLED_BACK

    wait_for("the node rolled back", rolled_back, timeout=60)
    after = node(cluster, first)
    assert after["spec"].get("unschedulable") is None
    assert SWITCH_LABEL not in after["metadata"].get("labels", {})
    failed = [e for e in out.record.timeline if e.result == "Failed"]
    assert [e.step for e in failed] == [Step.SWITCH]
    assert "did not report network" in failed[0].message
    steps = [e.step for e in out.record.timeline]
    assert steps == [
        Step.CORDON,
        Step.EVICT,
        Step.SWITCH,
        Step.RESTORE,
        Step.ROLLBACK_UNCORDON,
    ]
