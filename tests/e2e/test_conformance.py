"""Kubernetes' own sig-network e2e tests (e2e.test v1.33, built here) against cniwarden.

CI runs the subset that fits its budget (`suite.CI`: Networking Granular Checks,
the Services conformance specs and HostPort) on a fresh 2-real-node local cluster with the
chart installed; `make conformance` runs the full list (`suite.FULL`). The
JUnit report stays in build/conformance/ci/ (README "Conformance").
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from devtools.conformance import run, suite

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

# Specs the CI selection must run (a renamed or vanished spec must not pass silently).
MUST_RUN = (
    "Services should serve a basic endpoint from pods",
    "Granular Checks: Pods should function for node-pod communication: udp",
    "Granular Checks: Services should function for pod-Service: http",
    "Services should have session affinity work for service with type clusterIP",
    "HostPort validates that there is no conflict between pods with same hostPort",
    # Needs each node's own hostname (the local cluster's per-node UTS namespace).
    "Granular Checks: Services should function for service endpoints using hostNetwork",
)


@pytest.mark.usefixtures("conformance_tools")
def test_upstream_granular_checks_and_services_pass() -> None:
    procs = int(os.environ.get("CNIWARDEN_CONFORMANCE_PROCS", "3"))
    results = run.conformance(
        suite.CI,
        name=f"conf-{secrets.token_hex(3)}",
        procs=procs,
        keep=False,
        out_dir=run.OUT_DIR,
    )
    assert not results.failed, f"{results.summary()}; failed: {results.failed}"
    for spec in MUST_RUN:
        assert any(spec in name for name in results.passed_names), f"{spec!r} did not pass"
    assert results.ran >= 35, results.summary()
    summary = json.loads((run.OUT_DIR / suite.CI.name / "summary.json").read_text())
    assert summary["skipped_at_run_time"] == [], summary["skipped_at_run_time"]
