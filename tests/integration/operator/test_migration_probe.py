"""Verify's probe pod on real nodes (containerd + runc + kubelet, the local cluster's
reference bridge + host-local network over each node's pod CIDR, `cni="bridge"`).

Two real nodes are added; a real agent per node (its host root is the node's CNI
directories) and the controller run as in the fleet tests. A node is switched to a
cniwarden network by the migration's NodeDriver with `verify.probeImage` set: the
probe pod runs on the switched node, gets its address from the new network and
pings real pods on the other node and its default gateway. An unreachable peer
(a pod whose eth0 is down) fails Verify with that pod named, and the node is rolled
back to the reference conflist byte for byte; with a reachable peer both nodes
migrate, the second one probing a pod on the first (migrated) node."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_operator.kube import Kube
from cni_operator.migration.plan import SWITCH_LABEL
from cni_operator.migration.probe import PEER_LABEL, PROBE_LABEL
from cni_operator.migration.spec import MigrationSpec
from cni_operator.migration.steps import NodeRecord, Step, start
from cni_operator.migration_run import NodeDriver, NodeOutcome
from cni_operator.node.atomic import sha256_file

from devtools.localcluster import LocalCluster
from devtools.localcluster.cluster import RealNode
from devtools.localcluster.layout import BUSYBOX_IMAGE
from devtools.localcluster.pods import busybox_pod

from .conftest import CONVERGE_SECONDS, Fleet, running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]
REFERENCE = Path("/usr/lib/cni")
OLD_FILE = "10-localcluster.conflist"  # nodenet.write_bridge_conflist
STAMP = "2026-01-01T00:00:00Z"


def target_spec() -> dict[str, Any]:
    """The new network: our bridge on the same `cni0` (same gateway address), pod
    addresses from the node's pod CIDR, a default route through the gateway."""
    return {
        "priority": 20,
        "cniVersion": "1.0.0",
        "shadowPolicy": "Quarantine",
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "bridge": "cni0",
                "isGateway": True,
                "isDefaultGateway": True,
                "ipam": {"type": "cniwarden-host-local", "ranges": [[{"subnet": "usePodCIDR"}]]},
            }
        ],
        "binaries": [
            {
                "name": "loopback",
                "sha256": sha256_file(REFERENCE / "loopback"),
                "source": {"file": str(REFERENCE / "loopback")},
            }
        ],
    }


class Setup:
    def __init__(self, cluster: LocalCluster, fleet: Fleet, nodes: list[RealNode], to: str):
        self.cluster, self.fleet, self.nodes, self.to = cluster, fleet, nodes, to
        self.kube = Kube(str(cluster.kubeconfig))
        self.pods: list[str] = []

    def pod(self, name: str, node: str, command: str, *, net_admin: bool = False) -> str:
        """A labelled peer pod on `node`, Running; its address."""
        body = busybox_pod(
            name, node, ["sh", "-c", command], labels={PEER_LABEL: "yes"}, grace_seconds=0
        )
        if net_admin:
            body["spec"]["containers"][0]["securityContext"] = {
                "capabilities": {"add": ["NET_ADMIN"]}
            }
        self.pods.append(name)
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        self.cluster.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "--timeout=120s")
        out = self.cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")
        return out.stdout.strip()

    def delete_pod(self, name: str) -> None:
        self.cluster.kubectl(
            "delete", "pod", name, "--wait=true", "--timeout=60s", "--grace-period=0", check=False
        )

    def probe_pods(self) -> list[str]:
        listing = self.kube.list_pods("", PROBE_LABEL)
        return [p["metadata"]["name"] for p in listing]


@pytest.fixture(scope="module")
def setup(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    nodes = [cluster.add_real_node(cni="bridge") for _ in range(2)]
    roots = {n.name: n.host_root for n in nodes}
    names = [n.name for n in nodes]
    with running_fleet(cluster, tmp_path_factory.mktemp("probe"), names, roots) as fleet:
        to = fleet.name(f"probe-{secrets.token_hex(2)}")
        spec = target_spec()
        spec["nodeSelector"] = {SWITCH_LABEL: to}
        fleet.apply(to, spec)
        running = Setup(cluster, fleet, nodes, to)
        try:
            yield running
        finally:
            for name in running.pods:
                running.delete_pod(name)
            for node in names:
                cluster.kubectl("label", "node", node, f"{SWITCH_LABEL}-", check=False)
                cluster.kubectl("uncordon", node, check=False)


def drive_until(
    setup: Setup,
    migration: MigrationSpec,
    record: NodeRecord,
    others: list[NodeRecord],
    stop: Step,
) -> tuple[NodeRecord, list[NodeOutcome]]:
    """Drive one node pass after pass (as the controller's timer does) until it is at
    `stop`; every outcome is kept (the failures and Events are asserted on)."""
    driver = NodeDriver(setup.kube)
    holder = {"record": record}
    outcomes: list[NodeOutcome] = []

    def reached() -> bool:
        out = driver.drive(migration, holder["record"], setup.to, setup.to, others)
        outcomes.append(out)
        holder["record"] = out.record
        return out.record.step is stop

    setup.fleet.wait(reached, f"{record.name} at {stop}", timeout=3 * CONVERGE_SECONDS, interval=1)
    return holder["record"], outcomes


def fresh(setup: Setup, node: str, attempt: int) -> NodeRecord:
    facts, _, _ = NodeDriver(setup.kube).observe(node, setup.to)
    return start(NodeRecord(node, 0, attempt=attempt), facts, STAMP)


def migration(setup: Setup) -> MigrationSpec:
    return MigrationSpec.model_validate(
        {
            "from": {"networkName": "localcluster"},
            "to": {"cniNetwork": setup.to},
            "drain": {"timeoutSeconds": 120, "gracePeriodSeconds": 0},
            "verify": {"probeImage": BUSYBOX_IMAGE},
        }
    )


def test_an_unreachable_peer_fails_verify_by_name_and_the_node_rolls_back(setup: Setup) -> None:
    a, b = setup.nodes
    old = (a.cni_conf_dir / OLD_FILE).read_bytes()
    dead = f"dead-{secrets.token_hex(3)}"
    # A Running pod with an address that answers nothing: its eth0 goes down.
    dead_ip = setup.pod(dead, b.name, "ip link set eth0 down; exec sleep 3600", net_admin=True)
    try:
        others = [NodeRecord(b.name, 0)]
        record, outcomes = drive_until(
            setup, migration(setup), fresh(setup, a.name, 0), others, Step.ROLLED_BACK
        )
        (failed,) = [o for o in outcomes if o.failed_step is not None]
        assert failed.failed_step is Step.VERIFY
        assert f"UnmigratedNode (pod default/{dead} on node {b.name} ({dead_ip}))" in failed.cause
        assert "no answer to ping" in failed.cause
        assert "DefaultRoute" not in failed.cause  # the gateway answered
        assert [(e.step, e.result) for e in record.timeline] == [
            (Step.CORDON, "Succeeded"),
            (Step.EVICT, "Succeeded"),
            (Step.SWITCH, "Succeeded"),
            (Step.VERIFY, "Failed"),
            (Step.RESTORE, "Succeeded"),
            (Step.ROLLBACK_UNCORDON, "Succeeded"),
        ]
        assert (a.cni_conf_dir / OLD_FILE).read_bytes() == old
        assert not (a.cni_conf_dir / f"20-{setup.to}.conflist").exists()
        setup.fleet.wait(lambda: not setup.probe_pods(), "the probe pod deleted")
    finally:
        setup.delete_pod(dead)


def test_a_reachable_fleet_passes_verify_on_both_nodes(setup: Setup) -> None:
    a, b = setup.nodes
    peer_b = f"peer-{secrets.token_hex(3)}"
    ip_b = setup.pod(peer_b, b.name, "exec sleep 3600")
    record_a, outcomes = drive_until(
        setup, migration(setup), fresh(setup, a.name, 1), [NodeRecord(b.name, 0)], Step.DONE
    )
    assert all(o.failed_step is None for o in outcomes), [o.cause for o in outcomes]
    assert (Step.VERIFY, "Succeeded") in [(e.step, e.result) for e in record_a.timeline]
    probes = [m for o in outcomes for _, reason, m in o.events if reason == "Probe"]
    assert len(probes) == 1, probes
    assert f"UnmigratedNode (pod default/{peer_b} on node {b.name} ({ip_b}))" in probes[0]
    assert "DefaultRoute" in probes[0]
    assert "MigratedNode" not in probes[0]  # no node was migrated yet: skipped
    assert not (a.cni_conf_dir / OLD_FILE).exists()  # quarantined
    assert (a.cni_conf_dir / f"20-{setup.to}.conflist").exists()

    # The second node probes a pod on the first, now on the new network.
    peer_a = f"peer-{secrets.token_hex(3)}"
    ip_a = setup.pod(peer_a, a.name, "exec sleep 3600")
    done_a = NodeRecord(a.name, 0, step=Step.DONE)
    record_b, outcomes = drive_until(
        setup, migration(setup), fresh(setup, b.name, 0), [done_a], Step.DONE
    )
    assert all(o.failed_step is None for o in outcomes), [o.cause for o in outcomes]
    probes = [m for o in outcomes for _, reason, m in o.events if reason == "Probe"]
    assert len(probes) == 1, probes
    assert f"MigratedNode (pod default/{peer_a} on node {a.name} ({ip_a}))" in probes[0]
    assert "DefaultRoute" in probes[0]
    assert not setup.probe_pods()
    assert record_b.step is Step.DONE
