"""Shared pytest configuration for the whole suite."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The `cluster` marker and session fixture (a local Kubernetes at the tier the
# selected tests need); see devtools/localcluster/pytest_plugin.py.
pytest_plugins = ["devtools.localcluster.pytest_plugin"]

# Skips that are facts about this machine's kernel or about the path under test, not a
# missing install step. Every other skip is a failure under CNIWARDEN_REQUIRE_ALL=1
# (`make test` sets it), so a broken setup cannot hide behind a green run.
EXPECTED_SKIPS = (
    "CONFIG_BRIDGE_VLAN_FILTERING",  # the kernel cannot do bridge VLAN filtering
    "killing a shim leaves the server's work running",  # covered by fastpath/test_crash.py
    "the server bounds delegates by its request deadline",  # covered by fastpath/test_hang.py
    # kind: the test needs a token bound to a node, which only the local provider can mint
    "needs an agent's own token, which only the local provider holds",
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Turn an unexpected skip into a failure when the run requires everything to run."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or os.environ.get("CNIWARDEN_REQUIRE_ALL") != "1":
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if any(expected in reason for expected in EXPECTED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped with CNIWARDEN_REQUIRE_ALL=1: {reason or 'no reason given'}; "
        "every test must run where `make test` ran its setup"
    )


# The upstream conformance kit (e2e.test, ginkgo, agnhost: ~8 minutes of Go builds on a
# fresh machine, nothing once cached). Its test runs last, and the kit builds meanwhile
# at the lowest CPU priority, so a fresh machine's suite does not wait for it first:
# most of the suite waits on kernels, runtimes and kubelets with CPU to spare.
CONFORMANCE_TEST_FILE = "tests/e2e/test_conformance.py"
CONFORMANCE_BUILD = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    conformance = [item for item in items if item.nodeid.startswith(CONFORMANCE_TEST_FILE)]
    if not conformance:
        return
    items[:] = [item for item in items if item not in conformance] + conformance
    log = Path(tempfile.mkstemp(prefix="cniwarden-conformance-tools-", suffix=".log")[1])
    with log.open("wb") as out:
        build = subprocess.Popen(
            ["nice", "-n", "19", str(ROOT / "tools/build-tools.sh")],
            env={**os.environ, "TOOLS": "conformance"},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    config.stash[CONFORMANCE_BUILD] = (build, log)


@pytest.fixture(scope="session")
def conformance_tools(request: pytest.FixtureRequest) -> None:
    """Waits (at most 40 minutes) for the kit's build started at collection."""
    started = request.config.stash.get(CONFORMANCE_BUILD, None)
    assert started is not None, f"collection starts the kit's build for {CONFORMANCE_TEST_FILE}"
    build, log = started
    try:
        code = build.wait(timeout=2400)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"the conformance kit did not build within 40 minutes: {log.read_text()[-3000:]}"
        )
    assert code == 0, f"TOOLS=conformance tools/build-tools.sh failed: {log.read_text()[-3000:]}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(CONFORMANCE_BUILD, None)
    if started is None:
        return
    build, log = started
    if build.poll() is None:  # the run ended before it needed the kit (-x, a selection)
        os.killpg(build.pid, signal.SIGTERM)
        try:
            build.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)
            build.wait()
    log.unlink(missing_ok=True)
