"""The project's layout rules, checked so nobody breaks them by accident."""

import importlib
import operator
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    """A package named `operator` would shadow the standard library module."""
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert hasattr(operator, "itemgetter"), "stdlib operator module is shadowed"


def test_both_packages_import() -> None:
    for name in ("cni_operator", "node_plugin"):
        module = importlib.import_module(name)
        assert module.__doc__


PURE_MODULES = (
    "cni_operator.rendering",
    "cni_operator.runtime_order",
    "cni_operator.switch_gate",
    "cni_operator.conditions",
    "cni_operator.journal",
    "cni_operator.hostgw",
    "node_plugin.ipam.allocator",
    "node_plugin.cni.cniargs",
    "node_plugin.cni.versions",
    "node_plugin.cni.result",
    "node_plugin.bridge.masq_names",
    "node_plugin.cni.skel",
)
FORBIDDEN_IN_PURE = (
    "kopf",
    "kubernetes",
    "pyroute2",
    "node_plugin.kernel.rtnl",
    "node_plugin.kernel.netlink",
)


def test_pure_modules_import_no_framework_or_netlink() -> None:
    """Pure logic stays testable without a cluster or a kernel: no kopf, client or netlink."""
    probe = (
        "import importlib, sys\n"
        f"for name in {PURE_MODULES!r}: importlib.import_module(name)\n"
        f"print(','.join(m for m in {FORBIDDEN_IN_PURE!r} if m in sys.modules))\n"
    )
    env_path = f"{ROOT / 'operator'}:{ROOT}"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert done.stdout.strip() == "", f"pure modules pulled in: {done.stdout.strip()}"
