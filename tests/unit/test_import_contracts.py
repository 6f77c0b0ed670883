"""The layer contracts in `.importlinter` are live: a copy of the tree with a deliberate
violation fails `lint-imports`, naming the broken contract, and the unmodified copy passes.

The copy lives in a tmp dir, so the real tree is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _tree_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("node_plugin", "devtools", "bench"):
        shutil.copytree(ROOT / package, copy / package, ignore=ignore)
    shutil.copytree(
        ROOT / "operator" / "cni_operator", copy / "operator" / "cni_operator", ignore=ignore
    )
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    return copy


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=f"{tree / 'operator'}:{tree}")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _append_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


VIOLATIONS = [
    pytest.param(
        "node_plugin/kernel/sysctl.py",
        "from node_plugin.bridge import config as _above",
        "the kernel toolkit imports nothing above it",
        id="kernel-imports-bridge",
    ),
    pytest.param(
        "node_plugin/cni/versions.py",
        "import cni_operator.api as _operator",
        "node_plugin never imports the operator",
        id="plugin-imports-operator",
    ),
    pytest.param(
        "operator/cni_operator/doctor.py",
        "import devtools.localcluster as _devtools",
        "product code never imports devtools or bench",
        id="product-imports-devtools",
    ),
    pytest.param(
        "operator/cni_operator/rendering.py",
        "import subprocess as _subprocess",
        "pure modules import neither kopf, the API client, netlink nor subprocess",
        id="pure-imports-subprocess",
    ),
    pytest.param(
        "node_plugin/ipam/allocator.py",
        "from node_plugin.kernel import netlink as _netlink",
        "pure modules import neither kopf, the API client, netlink nor subprocess",
        id="pure-imports-netlink",
    ),
    pytest.param(
        "node_plugin/cni/result.py",
        "from node_plugin.ipam import store as _store",
        "node_plugin layers: server > bridge > ipam > kernel > cni",
        id="protocol-imports-ipam",
    ),
]


@pytest.mark.slow
def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    done = _lint(_tree_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("module", "line", "contract"), VIOLATIONS)
def test_a_violation_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _tree_copy(tmp_path)
    _append_import(tree / module, line)
    done = _lint(tree)
    assert done.returncode != 0, done.stdout
    assert f"{contract} BROKEN" in done.stdout, done.stdout
