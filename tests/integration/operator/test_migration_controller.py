"""The controller (`cniwarden operator --migrations`, a real process) running
CNIMigrations against a real API server with kwok nodes: a refused migration says
why; an accepted one cordons and drains its node, halts at the switch (kwok nodes
run no agent, so the new network is never reported), rolls the node back
(uncordoned, switch label gone) with the cause in status, Events and
`kubectl get`; a resume retries the node; skipping it finishes the migration."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator.migration.plan import SWITCH_LABEL

from devtools.localcluster import LocalCluster
from tests.integration.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster("fake-nodes")]
ROOT = Path(__file__).resolve().parents[3]
RUN = secrets.token_hex(3)
TO, OLD = f"mig-to-{RUN}", f"mig-old-{RUN}"
PIN = f"cniwarden.io/mig-ctl-{RUN}"


def network(name: str, selector: dict[str, str], routing: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "priority": 5,
        "shadowPolicy": "Quarantine",
        "nodeSelector": selector,
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "bridge": "cni0",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
    }
    if routing is not None:
        spec["routing"] = routing
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINetwork",
        "metadata": {"name": name},
        "spec": spec,
    }


HOST_GW = {"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]}


def migration(name: str, to: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"cniNetwork": OLD},
        "to": {"cniNetwork": to},
        "nodeSelector": {PIN: "yes"},
        "drain": {"timeoutSeconds": 3},
    }
    body.update(spec)
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNIMigration",
        "metadata": {"name": name},
        "spec": body,
    }


def get(cluster: LocalCluster, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", kind, name, "-o", "json").stdout))


class Operator:
    """`cniwarden operator --migrations` as a process of this test."""

    def __init__(self, cluster: LocalCluster, log: Path) -> None:
        self.cluster, self.log = cluster, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cni_operator.cli", "operator", "--migrations"],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
            cwd=ROOT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup, mid-pass if it happens to be in one."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None


@pytest.fixture
def controller(cluster: LocalCluster, tmp_path: Path) -> Iterator[tuple[str, Operator]]:
    """CRDs, a kwok node of this test's own, the two networks, and the controller."""
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/cnimigrations.cniwarden.io")
    (node,) = cluster.add_fake_nodes(1)
    cluster.kubectl("label", "node", node, f"{PIN}=yes")
    networks = [
        network(TO, {SWITCH_LABEL: TO}, HOST_GW),
        network(OLD, {f"{PIN}-none": "x"}, HOST_GW),  # selects no node: nothing is written
        network(f"{TO}-flat", {SWITCH_LABEL: f"{TO}-flat"}, None),
    ]
    for obj in networks:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    operator = Operator(cluster, tmp_path / "operator.log")
    operator.start()
    try:
        yield node, operator
    finally:
        cluster.kubectl(
            "delete", "cnimigrations", "-l", f"test-run={RUN}", "--wait=false", check=False
        )
        operator.stop()
        for obj in networks:
            name = obj["metadata"]["name"]
            cluster.kubectl("delete", "cninetwork", name, "--wait=false", check=False)
            cluster.kubectl(
                "patch",
                "cninetwork",
                name,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
        cluster.kubectl("uncordon", node, check=False)
        cluster.kubectl("label", "node", node, f"{PIN}-", f"{SWITCH_LABEL}-", check=False)
        print((tmp_path / "operator.log").read_text()[-4000:])


def apply(cluster: LocalCluster, obj: dict[str, Any]) -> None:
    obj["metadata"]["labels"] = {"test-run": RUN}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def in_phase(cluster: LocalCluster, name: str, phase: str) -> dict[str, Any] | None:
    status = dict(get(cluster, "cnimigration", name).get("status") or {})
    return status if status.get("phase") == phase else None


def patch(cluster: LocalCluster, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "cnimigration", name, "--type=merge", "-p", json.dumps({"spec": spec}))


def test_a_migration_that_cannot_keep_connectivity_is_refused(
    cluster: LocalCluster, controller: tuple[str, Operator]
) -> None:
    name = f"refused-{RUN}"
    apply(cluster, migration(name, f"{TO}-flat"))
    status = wait_for("the refusal", lambda: in_phase(cluster, name, "Refused"))
    assert status is not None
    assert f"to.cniNetwork {TO}-flat has routing.mode None" in " ".join(status["refusals"])
    assert not (get(cluster, "node", controller[0])["spec"].get("unschedulable"))


def test_halt_rollback_resume_and_skip(
    cluster: LocalCluster, controller: tuple[str, Operator]
) -> None:
    node = controller[0]
    name = f"halt-{RUN}"
    apply(cluster, migration(name, TO))

    def halted(attempt: int) -> dict[str, Any] | None:
        status = get(cluster, "cnimigration", name).get("status") or {}
        nodes = status.get("nodes") or [{}]
        done = nodes[0].get("step") == "RolledBack" and nodes[0].get("attempt") == attempt
        return status if status.get("phase") == "Halted" and done else None

    status = wait_for("the halt at the switch, rolled back", lambda: halted(1), timeout=120)
    assert status is not None
    assert status["halt"]["node"] == node
    assert status["halt"]["step"] == "Switch"
    assert "did not report network" in status["halt"]["cause"]
    assert status["progress"] == "0/1"
    condition = next(c for c in status["conditions"] if c["type"] == "Halted")
    assert condition["status"] == "True" and node in condition["message"]
    steps = [(e["step"], e["result"]) for e in status["nodes"][0]["timeline"]]
    assert steps == [
        ("Cordon", "Succeeded"),
        ("Evict", "Succeeded"),
        ("Switch", "Failed"),
        ("RestoreOld", "Succeeded"),
        ("RollbackUncordon", "Succeeded"),
    ]
    after = get(cluster, "node", node)
    assert not after["spec"].get("unschedulable")
    assert SWITCH_LABEL not in after["metadata"].get("labels", {})
    columns = cluster.kubectl("get", "cnimigration", name, "--no-headers").stdout.split()
    assert columns[:2] == [name, "Halted"] and "0/1" in columns

    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        "default",
        "--field-selector",
        f"involvedObject.kind=CNIMigration,involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Planned", "Cordon", "Evict", "SwitchFailed", "Halted"} <= reasons, reasons

    patch(cluster, name, {"resume": 1})
    wait_for("the retried node halted again", lambda: halted(2), timeout=120)

    patch(cluster, name, {"skipNodes": [node]})
    final = wait_for(
        "the migration finished without the skipped node",
        lambda: in_phase(cluster, name, "Succeeded"),
    )
    assert final is not None
    assert final["nodes"][0]["step"] == "Skipped"
    assert "halt" not in final  # the status patch's null removed it
    complete = next(c for c in final["conditions"] if c["type"] == "Complete")
    assert complete["status"] == "True"


def test_a_controller_killed_mid_migration_resumes_at_the_recorded_step(
    cluster: LocalCluster, controller: tuple[str, Operator]
) -> None:
    """Killed while the node waits in Switch (label set), restarted: the node goes
    on from Switch; no step is run twice (one timeline entry each), and the
    rollback after the switch times out still uncordons it."""
    node, operator = controller
    name = f"restart-{RUN}"
    apply(cluster, migration(name, TO, drain={"timeoutSeconds": 20}))

    def in_switch() -> bool:
        status = get(cluster, "cnimigration", name).get("status") or {}
        nodes = status.get("nodes") or [{}]
        return bool(nodes[0].get("step") == "Switch")

    wait_for("the node waiting in Switch", in_switch, timeout=60)
    operator.kill()
    assert get(cluster, "node", node)["metadata"]["labels"].get(SWITCH_LABEL) == TO
    operator.start()

    def rolled_back() -> dict[str, Any] | None:
        status = in_phase(cluster, name, "Halted")
        return status if status and status["nodes"][0]["step"] == "RolledBack" else None

    status = wait_for("the halt after the restart, rolled back", rolled_back, timeout=120)
    assert status is not None
    (record,) = status["nodes"]
    assert record["attempt"] == 1 and record["step"] == "RolledBack"
    steps = [e["step"] for e in record["timeline"]]
    assert steps == ["Cordon", "Evict", "Switch", "RestoreOld", "RollbackUncordon"]
    assert status["halt"]["step"] == "Switch"
    assert not get(cluster, "node", node)["spec"].get("unschedulable")


def test_a_node_deleted_mid_migration_leaves_it(
    cluster: LocalCluster, controller: tuple[str, Operator]
) -> None:
    """A Node object of this test's own (not a kwok node other tests list), deleted
    while its migration waits in Switch."""
    node, pin = f"mig-gone-{RUN}", f"{PIN}-gone"
    obj = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": {pin: "yes"}},
        "spec": {"podCIDR": "10.244.250.0/24", "podCIDRs": ["10.244.250.0/24"]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    name = f"gone-{RUN}"
    try:
        apply(cluster, migration(name, TO, nodeSelector={pin: "yes"}, drain={"timeoutSeconds": 60}))

        def in_switch() -> bool:
            status = get(cluster, "cnimigration", name).get("status") or {}
            return bool((status.get("nodes") or [{}])[0].get("step") == "Switch")

        wait_for("the node waiting in Switch", in_switch, timeout=60)
        cluster.kubectl("delete", "node", node)
        status = wait_for(
            "the migration done without it", lambda: in_phase(cluster, name, "Succeeded")
        )
        assert status is not None
        (record,) = status["nodes"]
        assert record["step"] == "Gone"
        assert record["timeline"][-1]["message"] == "the Node was deleted"
        assert status["progress"] == "0/0"
    finally:
        cluster.kubectl("delete", "node", node, "--ignore-not-found", check=False)
