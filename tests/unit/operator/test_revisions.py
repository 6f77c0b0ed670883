"""Spec revisions as a Deployment keeps them, and the choice of the rollback target."""

from __future__ import annotations

from typing import Any

import pytest
from cni_operator.revisions import RollbackError, rollback_target, spec_digest, with_revision


def spec(subnet: str) -> dict[str, Any]:
    return {"priority": 10, "plugins": [{"type": "b", "ipam": {"subnet": subnet}}]}


def test_a_revision_per_ready_spec_numbered_and_pruned() -> None:
    revs: list[dict[str, Any]] = []
    revs = with_revision(revs, generation=1, spec=spec("a"), ready=False, now="t")
    assert revs == []  # not Ready everywhere yet: not a known-good spec
    revs = with_revision(revs, generation=1, spec=spec("a"), ready=True, now="t1")
    revs = with_revision(revs, generation=1, spec=spec("a"), ready=True, now="t2")
    assert [r["revision"] for r in revs] == [1]
    revs = with_revision(revs, generation=2, spec=spec("b"), ready=True, now="t3")
    assert [(r["revision"], r["generation"]) for r in revs] == [(1, 1), (2, 2)]
    for n in range(3, 15):
        revs = with_revision(revs, generation=n, spec=spec(str(n)), ready=True, now="t", limit=10)
    assert [r["revision"] for r in revs] == list(range(5, 15))
    assert revs[-1]["sha256"] == spec_digest(spec("14"))


def test_rollback_target_defaults_to_the_newest_different_spec() -> None:
    revs: list[dict[str, Any]] = []
    for n, subnet in enumerate(("a", "b", "c"), start=1):
        revs = with_revision(revs, generation=n, spec=spec(subnet), ready=True, now="t")
    assert rollback_target(revs, spec("c"), None)["revision"] == 2
    # A broken edit that never became Ready: back to the newest good one.
    assert rollback_target(revs, spec("broken"), None)["revision"] == 3
    assert rollback_target(revs, spec("c"), 1)["spec"] == spec("a")
    with pytest.raises(RollbackError, match="kept revisions: 1, 2, 3"):
        rollback_target(revs, spec("c"), 9)
    with pytest.raises(RollbackError, match="no earlier revision"):
        rollback_target(revs[-1:], spec("c"), None)
