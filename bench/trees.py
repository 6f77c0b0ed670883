"""Another revision's product code, to run it side by side with this tree's."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_tree(rev: str, into: Path) -> Path:
    """The product code of git revision `rev`, to run its agent side by side."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "operator", "node_plugin"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into
