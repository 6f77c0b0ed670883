"""Every CEL rule of the CRDs, and the chart's CNINetwork admission policy, evaluated
by the real kube-apiserver with an accepting and a refusing example each.

cel-python (tests/unit/operator/test_crds.py) lacks Kubernetes' CEL libraries
(`isCIDR`, ...) and the API server's transition-rule semantics, so the verdicts
that count are asked of the server: `kubectl apply --dry-run=server` runs the
schema, the CEL rules and admission without storing anything. A test enumerates
the rules of crds/ and fails when one has no example here.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.localcluster import LocalCluster
from tests.chartlib import render as render_chart

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.cluster("control-plane")]
RUN = secrets.token_hex(3)


def bridge(**ipam: Any) -> dict[str, Any]:
    return {"type": "bridge", "ipam": {"type": "host-local", **ipam}}


def network(name: str = "", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "priority": 10,
        "plugins": [bridge(ranges=[[{"subnet": "usePodCIDR"}]])],
    }
    body.update(spec)
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINetwork",
        "metadata": {"name": name or f"adm-{RUN}"},
        "spec": body,
    }


def node_state(name: str, node_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINodeState",
        "metadata": {"name": name},
        "spec": {"nodeName": node_name},
    }


def node_routes(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNINodeRoutes",
        "metadata": {"name": name},
        "spec": {"nodes": [{"name": "n1", "podCIDRs": ["10.244.1.0/24"], "internalIPs": []}]},
    }


def migration(name: str = "", source: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": source or {"networkName": "bridge-net"},
        "to": {"cniNetwork": "cw-net"},
    }
    body.update(spec)
    return {
        "apiVersion": "cniwarden.io/v1alpha1",
        "kind": "CNIMigration",
        "metadata": {"name": name or f"mig-{RUN}"},
        "spec": body,
    }


def dry_run(cluster: LocalCluster, obj: dict[str, Any]) -> str | None:
    """None when the API server accepts `obj`, else its refusal."""
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False
    )
    return None if out.returncode == 0 else out.stderr


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster) -> LocalCluster:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/cninetworks.cniwarden.io",
        "crd/cninodestates.cniwarden.io",
        "crd/cnimigrations.cniwarden.io",
        "crd/cninoderoutes.cniwarden.io",
    )
    return cluster


# (rule location as in test_crds.walk, index) -> (an accepted object, a refused
# object, a piece of the refusal). Transition rules are in the tests below.
OBJECT_RULES: dict[tuple[str, str, int], tuple[dict[str, Any], dict[str, Any], str]] = {
    ("cninetworks.cniwarden.io", "", 0): (
        network("n" * 200),
        network("n" * 201),
        "metadata.name must be at most 200 characters",
    ),
    ("cninetworks.cniwarden.io", ".spec", 0): (
        network(routing={"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]}),
        network(
            routing={"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]},
            plugins=[bridge(ranges=[[{"subnet": "10.1.0.0/24"}]])],
        ),
        "routing.mode HostGateway needs an IPAM range with subnet usePodCIDR",
    ),
    ("cninetworks.cniwarden.io", ".spec.plugins[]", 0): (
        network(plugins=[bridge(ranges=[[{"subnet": "usePodCIDR"}], [{"subnet": "fd00::/64"}]])]),
        network(plugins=[bridge(ranges=[[{"subnet": "usePodCIDR", "rangeStart": "10.0.0.5"}]])]),
        "a range with subnet usePodCIDR must be alone in its range set",
    ),
    ("cninetworks.cniwarden.io", ".spec.plugins[].ipam.ranges[][].subnet", 0): (
        network(plugins=[bridge(ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]])]),
        network(plugins=[bridge(ranges=[[{"subnet": "10.1.0.0"}]])]),
        "subnet must be a CIDR or usePodCIDR",
    ),
    ("cninetworks.cniwarden.io", ".spec.binaries[].source", 0): (
        network(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"file": "/opt/b"}}]),
        network(
            binaries=[
                {"name": "b", "sha256": "a" * 64, "source": {"file": "/b", "url": "http://h/b"}}
            ]
        ),
        "source needs exactly one of file or url",
    ),
    ("cninetworks.cniwarden.io", ".spec.binaries[].source", 1): (
        network(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"url": "https://h/b"}}]),
        network(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"url": "ftp://h/b"}}]),
        "source.url must be http(s)",
    ),
    ("cninetworks.cniwarden.io", ".spec.binaries[].source", 2): (
        network(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"file": "/opt/b"}}]),
        network(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"file": "opt/b"}}]),
        "source.file must be an absolute path",
    ),
    ("cninetworks.cniwarden.io", ".spec.routing", 0): (
        network(routing={"mode": "HostGateway", "clusterCIDRs": ["10.244.0.0/16"]}),
        network(routing={"mode": "HostGateway"}),
        "routing.mode HostGateway needs routing.clusterCIDRs",
    ),
    ("cninetworks.cniwarden.io", ".spec.routing.clusterCIDRs[]", 0): (
        network(routing={"mode": "None", "clusterCIDRs": ["10.244.0.0/16", "fd00::/48"]}),
        network(routing={"mode": "None", "clusterCIDRs": ["10.244.0.0/33"]}),
        "clusterCIDRs entries must be CIDRs",
    ),
    ("cninodestates.cniwarden.io", "", 0): (
        node_state(f"node-{RUN}", f"node-{RUN}"),
        node_state(f"node-{RUN}", "another-node"),
        "a CNINodeState is named after its node",
    ),
    ("cninoderoutes.cniwarden.io", "", 0): (
        node_routes("cluster"),
        node_routes(f"routes-{RUN}"),
        "there is one CNINodeRoutes, named cluster",
    ),
    ("cnimigrations.cniwarden.io", ".spec", 0): (
        migration(source={"cniNetwork": "old-net"}),
        migration(source={"cniNetwork": "cw-net"}),
        "from.cniNetwork and to.cniNetwork must differ",
    ),
    ("cnimigrations.cniwarden.io", ".spec.from", 0): (
        migration(source={"cniNetwork": "old-net"}),
        migration(source={"cniNetwork": "old-net", "networkName": "bridge-net"}),
        "from needs exactly one of networkName",
    ),
    ("cnimigrations.cniwarden.io", ".spec.waves", 0): (
        migration(waves={"byLabel": "zone", "order": ["a", "b"]}),
        migration(waves={"order": ["a", "b"]}),
        "waves.order lists values of waves.byLabel: set byLabel too",
    ),
}
TRANSITION_RULES = {
    ("cnimigrations.cniwarden.io", ".spec.from", 1),
    ("cnimigrations.cniwarden.io", ".spec.to", 0),
    ("cnimigrations.cniwarden.io", ".spec.resume", 0),
    ("cnimigrations.cniwarden.io", ".spec.rollback", 0),
    ("cninetworks.cniwarden.io", "", 1),
    ("cninetworks.cniwarden.io", ".spec.networkName", 0),
    ("cninodestates.cniwarden.io", ".spec.nodeName", 0),
}


def crd_rules() -> set[tuple[str, str, int]]:
    found = set()
    for path in (ROOT / "crds").glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        (version,) = crd["spec"]["versions"]

        def walk(node: dict[str, Any], where: str, crd_name: str = crd["metadata"]["name"]) -> None:
            for index, _ in enumerate(node.get("x-kubernetes-validations") or []):
                found.add((crd_name, where, index))
            for key, child in (node.get("properties") or {}).items():
                walk(child, f"{where}.{key}")
            if isinstance(node.get("items"), dict):
                walk(node["items"], f"{where}[]")

        walk(version["schema"]["openAPIV3Schema"], "")
    return found


def test_every_cel_rule_has_examples_here() -> None:
    assert crd_rules() == set(OBJECT_RULES) | TRANSITION_RULES


@pytest.mark.parametrize("rule", sorted(OBJECT_RULES), ids=lambda r: f"{r[0][:9]}{r[1]}[{r[2]}]")
def test_the_api_server_accepts_and_refuses(crds: LocalCluster, rule: tuple[str, str, int]) -> None:
    accepted, refused, why = OBJECT_RULES[rule]
    assert dry_run(crds, accepted) is None
    refusal = dry_run(crds, refused)
    assert refusal is not None, f"{rule}: the API server accepted {refused}"
    assert why in refusal, refusal


@pytest.fixture
def stored(crds: LocalCluster) -> Iterator[dict[str, Any]]:
    """A CNINetwork really stored, for the transition rules (which see oldSelf)."""
    obj = network(f"adm-stored-{secrets.token_hex(3)}", networkName=f"net-{RUN}")
    crds.kubectl("apply", "-f", "-", input=json.dumps(obj))
    try:
        yield obj
    finally:
        crds.kubectl("delete", "cninetwork", obj["metadata"]["name"], "--wait=false", check=False)


def test_network_name_is_immutable(crds: LocalCluster, stored: dict[str, Any]) -> None:
    same = json.loads(json.dumps(stored))
    same["spec"]["priority"] = 11
    assert dry_run(crds, same) is None
    renamed = json.loads(json.dumps(stored))
    renamed["spec"]["networkName"] = "another"
    refusal = dry_run(crds, renamed)
    assert refusal is not None and "spec.networkName is immutable" in refusal
    removed = json.loads(json.dumps(stored))
    del removed["spec"]["networkName"]
    refusal = dry_run(crds, removed)
    assert refusal is not None and "networkName cannot be added or removed" in refusal


def test_network_name_cannot_be_added(crds: LocalCluster) -> None:
    name = f"adm-plain-{secrets.token_hex(3)}"
    crds.kubectl("apply", "-f", "-", input=json.dumps(network(name)))
    try:
        added = network(name, networkName="late")
        refusal = dry_run(crds, added)
        assert refusal is not None and "networkName cannot be added or removed" in refusal
        assert dry_run(crds, network(name, priority=12)) is None
    finally:
        crds.kubectl("delete", "cninetwork", name, "--wait=false", check=False)


def test_node_state_node_name_is_immutable(crds: LocalCluster) -> None:
    name = f"adm-node-{secrets.token_hex(3)}"
    crds.kubectl("apply", "-f", "-", input=json.dumps(node_state(name, name)))
    try:
        assert dry_run(crds, node_state(name, name)) is None
        changed = node_state(name, name)
        changed["spec"]["nodeName"] = "other"
        refusal = dry_run(crds, changed)
        assert refusal is not None and "nodeName is immutable" in refusal
    finally:
        crds.kubectl("delete", "cninodestate", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def canonical_keys_policy(crds: LocalCluster) -> Iterator[LocalCluster]:
    """The chart's canonical-keys policy, under a release name of this run."""
    objects = render_chart(release=f"adm{RUN}")
    policy = [o for o in objects if o["metadata"]["name"].endswith("-canonical-keys")]
    assert {o["kind"] for o in policy} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    crds.kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": policy})
    )
    try:
        # The API server loads a new policy asynchronously: wait until it refuses.
        probe = network(plugins=[{"type": "bridge", "IPAM": {"type": "host-local"}}])
        deadline = time.monotonic() + 60
        while dry_run(crds, probe) is None:
            assert time.monotonic() < deadline, "the policy never took effect"
            time.sleep(0.5)
        yield crds
    finally:
        for obj in reversed(policy):
            crds.kubectl(
                "delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False
            )


@pytest.mark.parametrize(
    ("plugin", "where"),
    [
        ({"type": "bridge", "IPAM": {"type": "host-local"}}, "write the keys type and ipam"),
        ({"Type": "bridge", "type": "bridge"}, "write the keys type and ipam"),
        ({"type": "bridge", "ipam": {"Type": "host-local"}}, "spec.plugins[].ipam: write"),
        ({"type": "bridge", "ipam": {"type": "host-local", "Ranges": []}}, "ipam: write"),
        (
            {"type": "bridge", "ipam": {"ranges": [[{"Subnet": "10.0.0.0/8"}]]}},
            "ipam.ranges[][]: write",
        ),
        (
            {"type": "bridge", "ipam": {"ranges": [[{"subnet": "10.0.0.0/8", "RANGESTART": "x"}]]}},
            "ipam.ranges[][]: write",
        ),
    ],
)
def test_other_spellings_of_the_keys_the_rules_check_are_refused(
    canonical_keys_policy: LocalCluster, plugin: dict[str, Any], where: str
) -> None:
    refusal = dry_run(canonical_keys_policy, network(plugins=[plugin]))
    assert refusal is not None and where in refusal, refusal


def test_canonical_and_unknown_keys_pass_the_policy(canonical_keys_policy: LocalCluster) -> None:
    plugin = {
        "type": "bridge",
        "Bridge": "cw0",  # not a key the rules check: the switch gate folds it
        "isgateway": True,
        "ipam": {
            "type": "host-local",
            "ranges": [
                [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "gateway": "10.1.0.1"}]
            ],
            "dataDir": "/run/x",
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    assert dry_run(canonical_keys_policy, network(plugins=[plugin])) is None


def can_i(cluster: LocalCluster, user: str, verb: str) -> bool:
    out = cluster.kubectl(
        "auth", "can-i", verb, "cninetworks.cniwarden.io", "--as", user, check=False
    )
    return out.stdout.strip() == "yes"


def test_only_the_cniwarden_admin_role_may_create_networks(crds: LocalCluster) -> None:
    """The chart's aggregated admin role, filled by the real controller manager,
    grants CNINetwork writes; the built-in admin role does not, view may read."""
    release = f"rbac{RUN}"
    objects = render_chart(release=release)
    roles = [
        o
        for o in objects
        if o["kind"] == "ClusterRole"
        and o["metadata"]["name"].endswith(("-admin", "-admin-networks", "-view"))
    ]
    assert len(roles) == 3
    admin = next(o["metadata"]["name"] for o in roles if o["metadata"]["name"].endswith("-admin"))
    users = {f"alice-{RUN}": admin, f"bob-{RUN}": "admin", f"carol-{RUN}": "view"}
    bindings = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{user}-binding"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }
        for user, role in users.items()
    ]
    items = {"apiVersion": "v1", "kind": "List", "items": roles + bindings}
    crds.kubectl("apply", "-f", "-", input=json.dumps(items))
    try:
        alice, bob, carol = users
        deadline = time.monotonic() + 60
        while not can_i(crds, alice, "create"):  # the aggregation controller fills the role
            assert time.monotonic() < deadline, "the admin role was never aggregated"
            time.sleep(0.5)
        assert can_i(crds, alice, "delete")
        assert not can_i(crds, bob, "create"), "the built-in admin role may create networks"
        assert can_i(crds, carol, "list") and not can_i(crds, carol, "create")
    finally:
        for obj in bindings + roles:
            crds.kubectl(
                "delete", obj["kind"], obj["metadata"]["name"], "--ignore-not-found", check=False
            )


@pytest.fixture
def stored_migration(crds: LocalCluster) -> Iterator[dict[str, Any]]:
    """A CNIMigration really stored (no controller runs here: nothing acts on it)."""
    obj = migration(f"mig-stored-{secrets.token_hex(3)}", resume=1)
    crds.kubectl("apply", "-f", "-", input=json.dumps(obj))
    try:
        yield obj
    finally:
        crds.kubectl("delete", "cnimigration", obj["metadata"]["name"], "--wait=false", check=False)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"from": {"networkName": "other"}}, "spec.from is immutable"),
        ({"to": {"cniNetwork": "other"}}, "spec.to is immutable"),
        ({"resume": 0}, "spec.resume only goes up"),
    ],
)
def test_migration_transition_rules(
    crds: LocalCluster, stored_migration: dict[str, Any], change: dict[str, Any], why: str
) -> None:
    allowed = json.loads(json.dumps(stored_migration))
    allowed["spec"].update({"resume": 2, "pause": True, "skipNodes": ["w1"], "rollback": True})
    assert dry_run(crds, allowed) is None
    refused = json.loads(json.dumps(stored_migration))
    refused["spec"].update(change)
    refusal = dry_run(crds, refused)
    assert refusal is not None and why in refusal, refusal


def test_migration_rollback_cannot_be_unset(
    crds: LocalCluster, stored_migration: dict[str, Any]
) -> None:
    rolling = json.loads(json.dumps(stored_migration))
    rolling["spec"]["rollback"] = True
    crds.kubectl("apply", "-f", "-", input=json.dumps(rolling))
    back = json.loads(json.dumps(rolling))
    back["spec"]["rollback"] = False
    refusal = dry_run(crds, back)
    assert refusal is not None and "spec.rollback cannot be unset once set" in refusal, refusal
