"""The committed CRI stubs are what scripts/gen-cri-stubs.sh makes from the vendored
proto, and carry the two calls the agent makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cni_operator.cri import cri_runtime_v1_pb2 as cri

REPO = Path(__file__).resolve().parents[3]
STUBS = REPO / "operator" / "cni_operator" / "cri"


def test_committed_stubs_match_the_generator(tmp_path: Path) -> None:
    env = dict(os.environ, CRI_STUBS_OUT=str(tmp_path), PYTHON=sys.executable)
    subprocess.run([str(REPO / "scripts" / "gen-cri-stubs.sh")], env=env, check=True, timeout=120)
    for name in ("cri_runtime_v1_pb2.py", "cri_runtime_v1_pb2.pyi"):
        fresh = (tmp_path / name).read_bytes()
        assert fresh == (STUBS / name).read_bytes(), f"{name} is stale: run gen-cri-stubs.sh"


def test_the_stubs_carry_runtime_service_version_and_status() -> None:
    service = cri.DESCRIPTOR.services_by_name["RuntimeService"]
    assert {"Version", "Status"} <= {m.name for m in service.methods}
    assert cri.DESCRIPTOR.package == "runtime.v1"
    answer = cri.StatusResponse.FromString(
        cri.StatusResponse(
            status=cri.RuntimeStatus(
                conditions=[cri.RuntimeCondition(type="NetworkReady", status=False, reason="R")]
            )
        ).SerializeToString()
    )
    assert answer.status.conditions[0].reason == "R"
