"""The project's layout rules, checked so nobody breaks them by accident."""

import importlib
import operator
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
