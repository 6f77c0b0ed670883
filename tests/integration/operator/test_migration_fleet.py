"""A CNIMigration's node steps with real agents (the fleet: `cniwarden agent` per kwok
node on a host-root directory, and the controller): a node on a foreign reference
bridge conflist over its pod CIDR is switched to a CNINetwork by the switch label
(the agent writes the new file and quarantines the old one, journaled), verified by
the agent's report, uncordoned; then rolled back on request: the new file is gone
and the old one is back byte for byte."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest
from cni_operator.kube import Kube
from cni_operator.migration.plan import SWITCH_LABEL, old_network_on, runtime_view
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import NodeRecord, Step, begin_rollback, start
from cni_operator.migration_run import NodeDriver

from .conftest import CONVERGE_SECONDS, Fleet
from .test_operator import bridge_spec

pytestmark = [pytest.mark.cluster("fake-nodes")]


def old_conflist(name: str, subnet: str) -> bytes:
    plugin = {
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]},
    }
    body = {"cniVersion": "1.0.0", "name": name, "plugins": [plugin]}
    return (json.dumps(body, indent=2) + "\n").encode()


def visible(fleet: Fleet, node: str) -> list[str]:
    """The config files a runtime reads (the quarantine store is a dot-directory)."""
    return [f for f in fleet.conf_files(node) if not f.startswith(".")]


def test_switch_quarantines_the_old_file_and_rollback_restores_it_byte_for_byte(
    fleet: Fleet,
) -> None:
    node = fleet.nodes[0]
    run = secrets.token_hex(3)
    old_name, to = f"old-{run}", fleet.name(f"mig-{run}")
    kube = Kube(str(fleet.cluster.kubeconfig))
    node_obj = kube.get_node(node)
    assert node_obj is not None
    subnet = node_obj["spec"]["podCIDR"]
    fleet.conf_dir(node).mkdir(parents=True, exist_ok=True)
    planted = fleet.conf_dir(node) / "10-bridge.conflist"
    payload = old_conflist(old_name, subnet)
    planted.write_bytes(payload)
    spec = bridge_spec(priority=20, bridge="cni0")
    spec.update(shadowPolicy="Quarantine", nodeSelector={SWITCH_LABEL: to})
    fleet.apply(to, spec)
    try:
        # The agent reports the old network as the compatibility check reads it.
        old = fleet.wait(
            lambda: old_network_on({"status": fleet.node_state(node)}, old_name),
            "the old network in the node report",
        )
        assert old.subnets == (subnet,) and old.bridge == "cni0"
        assert fleet.conf_files(node) == ["10-bridge.conflist"]  # not selected yet

        driver = NodeDriver(kube)
        migration = MigrationSpec.model_validate(
            {
                "from": {"networkName": old_name},
                "to": {"cniNetwork": to},
                "drain": {"timeoutSeconds": int(CONVERGE_SECONDS)},
            }
        )
        facts, _, _ = driver.observe(node, to)
        holder = {"record": start(NodeRecord(node, 0), facts, "2026-01-01T00:00:00Z")}

        def reached(step: Step) -> bool:
            out = driver.drive(migration, holder["record"], to, to)
            assert out.failed_step is None, out
            holder["record"] = out.record
            return out.record.step is step

        fleet.wait(lambda: reached(Step.DONE), "the node migrated")
        done = holder["record"]
        assert [(e.step, e.result) for e in done.timeline] == [
            (Step.CORDON, "Succeeded"),
            (Step.EVICT, "Succeeded"),
            (Step.SWITCH, "Succeeded"),
            (Step.VERIFY, "Succeeded"),
            (Step.UNCORDON, "Succeeded"),
        ]
        assert visible(fleet, node) == [f"20-{to}.conflist"]
        state = fleet.node_state(node)
        (moved,) = state["quarantined"]
        assert moved["original"] == "/etc/cni/net.d/10-bridge.conflist"
        assert (fleet.roots[node] / moved["stored"].lstrip("/")).read_bytes() == payload
        view = runtime_view({"status": state})
        assert (view.network, view.healthy) == (to, True)
        after: dict[str, Any] = kube.get_node(node) or {}
        assert not after["spec"].get("unschedulable")
        assert after["metadata"]["labels"][SWITCH_LABEL] == to

        # Roll the migrated node back: drained again, label removed, old file back.
        holder["record"] = begin_rollback(done, "2026-01-01T00:00:00Z")
        fleet.wait(lambda: reached(Step.ROLLED_BACK), "the node rolled back")
        assert fleet.conf_files(node) == ["10-bridge.conflist"]  # the store is gone too
        assert planted.read_bytes() == payload
        assert fleet.node_state(node).get("quarantined") in (None, [])
        back: dict[str, Any] = kube.get_node(node) or {}
        assert not back["spec"].get("unschedulable")
        assert SWITCH_LABEL not in back["metadata"]["labels"]
    finally:
        fleet.cluster.kubectl("uncordon", node, check=False)
        fleet.cluster.kubectl("label", "node", node, f"{SWITCH_LABEL}-", check=False)
        fleet.delete(to)
        planted.unlink(missing_ok=True)


def test_a_pod_left_on_the_old_network_is_switched_past_by_the_acknowledgement(
    fleet: Fleet,
) -> None:
    """A pod the drain leaves (a DaemonSet's) keeps an old-network lease on the node.
    The new file sorts first, so writing it is a takeover, which the gate holds while
    that pod is attached; the migration's acknowledgement for this node and
    generation lets it through, and only on this node."""
    node, other = fleet.nodes[1], fleet.nodes[2]
    run = secrets.token_hex(3)
    old_name, to = f"old-{run}", fleet.name(f"ack-{run}")
    kube = Kube(str(fleet.cluster.kubeconfig))
    node_obj = kube.get_node(node)
    assert node_obj is not None
    subnet = node_obj["spec"]["podCIDR"]
    conf = fleet.conf_dir(node)
    conf.mkdir(parents=True, exist_ok=True)
    planted = conf / "10-bridge.conflist"
    payload = old_conflist(old_name, subnet)
    planted.write_bytes(payload)
    leases = fleet.roots[node] / "var/lib/cni/networks" / old_name
    leases.mkdir(parents=True, exist_ok=True)
    (leases / subnet.replace("0/24", "7")).write_text(f"{'d' * 64}\r\neth0")
    spec = bridge_spec(priority=5, bridge="cni0")
    spec.update(shadowPolicy="Quarantine", nodeSelector={SWITCH_LABEL: to})
    fleet.apply(to, spec)
    try:
        fleet.wait(
            lambda: any(
                a["network"] == old_name for a in fleet.node_state(node).get("attachments") or []
            ),
            "the old network's attachment reported",
        )
        driver = NodeDriver(kube)
        migration = MigrationSpec.model_validate(
            {
                "from": {"networkName": old_name},
                "to": {"cniNetwork": to},
                "drain": {"timeoutSeconds": int(CONVERGE_SECONDS)},
            }
        )
        facts, _, _ = driver.observe(node, to)
        holder = {"record": start(NodeRecord(node, 0), facts, "2026-01-01T00:00:00Z")}

        def reached(step: Step) -> bool:
            out = driver.drive(migration, holder["record"], to, to)
            assert out.failed_step is None, out
            holder["record"] = out.record
            return out.record.step is step

        fleet.wait(lambda: reached(Step.DONE), "the node migrated past the gate")
        assert visible(fleet, node) == [f"05-{to}.conflist", "10-bridge.conflist"]
        assert planted.read_bytes() == payload  # shadowed, not moved: pods still use it
        meta = fleet.network(to)["metadata"]
        annotations = meta.get("annotations") or {}
        assert annotations["cniwarden.io/proceed-generation"] == str(meta["generation"])
        assert annotations["cniwarden.io/proceed-nodes"] == node
        assert other not in annotations["cniwarden.io/proceed-nodes"]
        view = runtime_view({"status": fleet.node_state(node)})
        assert (view.network, view.healthy) == (to, True)

        holder["record"] = begin_rollback(holder["record"], "2026-01-01T00:00:00Z")
        fleet.wait(lambda: reached(Step.ROLLED_BACK), "the node rolled back")
        assert visible(fleet, node) == ["10-bridge.conflist"]
        assert planted.read_bytes() == payload
    finally:
        fleet.cluster.kubectl("uncordon", node, check=False)
        fleet.cluster.kubectl("label", "node", node, f"{SWITCH_LABEL}-", check=False)
        fleet.delete(to)
        planted.unlink(missing_ok=True)
        for lease in leases.iterdir():
            lease.unlink()
        leases.rmdir()


def test_an_agent_down_during_the_rollback_halts_it_and_a_resume_finishes(
    fleet: Fleet,
) -> None:
    """The node's agent is stopped after the switch: the restore cannot happen, the
    RestoreOld step fails after the timeout (the node stays there, halted); with
    the agent back the retried step restores the old file byte for byte."""
    node = fleet.nodes[2]
    run = secrets.token_hex(3)
    old_name, to = f"old-{run}", fleet.name(f"down-{run}")
    kube = Kube(str(fleet.cluster.kubeconfig))
    node_obj = kube.get_node(node)
    assert node_obj is not None
    conf = fleet.conf_dir(node)
    conf.mkdir(parents=True, exist_ok=True)
    planted = conf / "10-bridge.conflist"
    payload = old_conflist(old_name, node_obj["spec"]["podCIDR"])
    planted.write_bytes(payload)
    spec = bridge_spec(priority=20, bridge="cni0")
    spec.update(shadowPolicy="Quarantine", nodeSelector={SWITCH_LABEL: to})
    fleet.apply(to, spec)
    skew = [0.0]
    driver = NodeDriver(kube, clock=lambda: time.time() + skew[0])
    migration = MigrationSpec.model_validate(
        {
            "from": {"networkName": old_name},
            "to": {"cniNetwork": to},
            "drain": {"timeoutSeconds": int(CONVERGE_SECONDS)},
        }
    )
    try:
        facts, _, _ = driver.observe(node, to)
        holder = {"record": start(NodeRecord(node, 0), facts, "2026-01-01T00:00:00Z")}
        failures: list[tuple[Step | None, str]] = []

        def reached(step: Step) -> bool:
            out = driver.drive(migration, holder["record"], to, to)
            if out.failed_step is not None:
                failures.append((out.failed_step, out.cause))
            holder["record"] = out.record
            return out.record.step is step

        fleet.wait(lambda: reached(Step.DONE), "the node migrated")
        assert failures == []
        fleet.stop_agent(node)
        holder["record"] = begin_rollback(holder["record"], "2026-01-01T00:00:00Z")
        fleet.wait(lambda: reached(Step.RESTORE), "the rollback waiting in RestoreOld")
        assert not reached(Step.ROLLBACK_UNCORDON)  # the stale report still names the new network
        skew[0] = CONVERGE_SECONDS + 1
        assert reached(Step.RESTORE)
        assert [s for s, _ in failures] == [Step.RESTORE]
        assert "still reports network" in failures[0][1]
        assert visible(fleet, node) == [f"20-{to}.conflist"]  # nothing restored without it
        skew[0] = 0.0
        fleet.start_agent(node)
        fleet.wait(lambda: reached(Step.ROLLED_BACK), "the node rolled back with its agent")
        assert fleet.conf_files(node) == ["10-bridge.conflist"]
        assert planted.read_bytes() == payload
        assert not (kube.get_node(node) or {})["spec"].get("unschedulable")
    finally:
        if node not in fleet.agents:
            fleet.start_agent(node)
        fleet.cluster.kubectl("uncordon", node, check=False)
        fleet.cluster.kubectl("label", "node", node, f"{SWITCH_LABEL}-", check=False)
        fleet.delete(to)
        planted.unlink(missing_ok=True)


def test_a_missing_binary_rolls_the_node_back_byte_for_byte(fleet: Fleet) -> None:
    """The new network names a plugin binary the node does not have: the switch is
    never confirmed healthy, the node is rolled back, the old file restored exactly."""
    node = fleet.nodes[0]
    run = secrets.token_hex(3)
    old_name, to = f"old-{run}", fleet.name(f"nobin-{run}")
    kube = Kube(str(fleet.cluster.kubeconfig))
    node_obj = kube.get_node(node)
    assert node_obj is not None
    conf = fleet.conf_dir(node)
    conf.mkdir(parents=True, exist_ok=True)
    planted = conf / "10-bridge.conflist"
    payload = old_conflist(old_name, node_obj["spec"]["podCIDR"])
    planted.write_bytes(payload)
    spec = bridge_spec(priority=20, bridge="cni0")
    spec["plugins"][0]["type"] = f"missing-{run}"
    spec.update(shadowPolicy="Quarantine", nodeSelector={SWITCH_LABEL: to})
    fleet.apply(to, spec)
    skew = [0.0]
    driver = NodeDriver(kube, clock=lambda: time.time() + skew[0])
    migration = MigrationSpec.model_validate(
        {
            "from": {"networkName": old_name},
            "to": {"cniNetwork": to},
            "drain": {"timeoutSeconds": 10},
        }
    )
    try:
        facts, _, _ = driver.observe(node, to)
        holder = {"record": start(NodeRecord(node, 0), facts, "2026-01-01T00:00:00Z")}
        failures: list[tuple[Step, str]] = []

        def rolled_back() -> bool:
            out = driver.drive(migration, holder["record"], to, to)
            if out.failed_step is not None:
                failures.append((out.failed_step, out.cause))
            holder["record"] = out.record
            return out.record.step is Step.ROLLED_BACK

        fleet.wait(rolled_back, "the node rolled back", timeout=2 * CONVERGE_SECONDS)
        (failed,) = failures
        assert failed[0] in (Step.SWITCH, Step.VERIFY), failed
        assert fleet.conf_files(node) == ["10-bridge.conflist"]
        assert planted.read_bytes() == payload
        back = kube.get_node(node) or {}
        assert not back["spec"].get("unschedulable")
        assert SWITCH_LABEL not in back["metadata"]["labels"]
        print(f"failed at {failed[0]}: {failed[1]}")
    finally:
        fleet.cluster.kubectl("uncordon", node, check=False)
        fleet.cluster.kubectl("label", "node", node, f"{SWITCH_LABEL}-", check=False)
        fleet.delete(to)
        planted.unlink(missing_ok=True)
