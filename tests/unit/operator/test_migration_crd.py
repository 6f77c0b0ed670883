"""The CNIMigration CRD, checked offline: what its CEL rules decide, its printer
columns and that its defaults are the spec model's (the API server re-checks the
rules in tests/integration/operator/test_admission.py)."""

from typing import Any

from cni_operator import api
from cni_operator.migration.spec import ALL_PEERS, MigrationSpec

from tests.unit.operator.test_crds import CRDS, cel, rule_at, schema_of

NAME = "cnimigrations.cniwarden.io"


def spec_schema() -> dict[str, Any]:
    return schema_of(NAME)["properties"]["spec"]  # type: ignore[no-any-return]


def test_names() -> None:
    names = CRDS[NAME]["spec"]["names"]
    assert (names["kind"], names["plural"]) == (api.MIGRATION_KIND, api.MIGRATION_PLURAL)


def test_printer_columns_show_phase_progress_node_and_step() -> None:
    (version,) = CRDS[NAME]["spec"]["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Done/Total": ".status.progress",
        "Node": ".status.currentNode",
        "Step": ".status.currentStep",
        "Age": ".metadata.creationTimestamp",
    }


def test_from_needs_exactly_one_source() -> None:
    rule = rule_at(NAME, ".spec.from", 0)
    assert cel(rule, self={"networkName": "bridge-net"})
    assert cel(rule, self={"cniNetwork": "old"})
    assert not cel(rule, self={})
    assert not cel(rule, self={"networkName": "a", "cniNetwork": "b"})


def test_not_to_itself() -> None:
    rule = rule_at(NAME, ".spec", 0)
    assert cel(rule, self={"from": {"cniNetwork": "a"}, "to": {"cniNetwork": "b"}})
    assert cel(rule, self={"from": {"networkName": "a"}, "to": {"cniNetwork": "a"}})
    assert not cel(rule, self={"from": {"cniNetwork": "a"}, "to": {"cniNetwork": "a"}})


def test_order_needs_by_label() -> None:
    rule = rule_at(NAME, ".spec.waves", 0)
    assert cel(rule, self={"byLabel": "zone", "order": ["a"]})
    assert cel(rule, self={"maxUnavailable": 2})
    assert not cel(rule, self={"order": ["a"]})


def test_transition_rules() -> None:
    for path in (".spec.from", ".spec.to"):
        index = 1 if path == ".spec.from" else 0
        rule = rule_at(NAME, path, index)
        assert cel(rule, self={"cniNetwork": "a"}, oldSelf={"cniNetwork": "a"})
        assert not cel(rule, self={"cniNetwork": "b"}, oldSelf={"cniNetwork": "a"})
    resume = rule_at(NAME, ".spec.resume")
    assert cel(resume, self=2, oldSelf=1) and cel(resume, self=1, oldSelf=1)
    assert not cel(resume, self=0, oldSelf=1)
    rollback = rule_at(NAME, ".spec.rollback")
    assert cel(rollback, self=True, oldSelf=False) and cel(rollback, self=False, oldSelf=False)
    assert not cel(rollback, self=False, oldSelf=True)


def test_defaults_and_enums_agree_with_the_model() -> None:
    props = spec_schema()["properties"]
    model = MigrationSpec.model_validate({"from": {"networkName": "x"}, "to": {"cniNetwork": "y"}})
    assert props["waves"]["properties"]["maxUnavailable"]["default"] == model.waves.maxUnavailable
    assert props["drain"]["properties"]["timeoutSeconds"]["default"] == model.drain.timeoutSeconds
    assert props["pause"]["default"] is model.pause
    assert props["resume"]["default"] == model.resume
    assert props["rollback"]["default"] is model.rollback
    assert props["verify"]["properties"]["peers"]["items"]["enum"] == list(ALL_PEERS)
    # Every spec field of the CRD is a field of the model, and the other way round.
    fields = {f.alias or name for name, f in MigrationSpec.model_fields.items()}
    assert set(props) == fields
