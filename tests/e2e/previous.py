"""The previous released version of cniwarden, from this repository's history.

`helm upgrade` is tested from the chart version before the current one: the
tree just before the commit that changed charts/cniwarden/Chart.yaml's
`version:` to the current one is that release, and `git archive` of it gives
its chart and the sources its images are built from (its images/Dockerfile).
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART_FILE = "charts/cniwarden/Chart.yaml"
# What images/Dockerfile copies, and the chart.
SOURCES = (
    "Makefile",
    "README.md",
    "pyproject.toml",
    "constraints.txt",
    "crds",
    "charts",
    "images",
    "operator",
    "node_plugin",
    "shim",
)


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def chart_version(chart_yaml: str) -> str:
    match = re.search(r"^version:\s*\"?([^\"\s]+)", chart_yaml, re.MULTILINE)
    if match is None:
        raise ValueError("Chart.yaml has no version")
    return match.group(1)


def previous_release() -> tuple[str, str]:
    """(commit, chart version) of the previous release: the tree just before the
    commit that brought the checkout's chart version (HEAD when that is not
    committed yet)."""
    current = chart_version((ROOT / CHART_FILE).read_text())
    bump = ""  # the oldest commit seen so far that carries the current version
    for commit in _git("log", "--format=%H", "--", CHART_FILE).split():
        try:
            version = chart_version(_git("show", f"{commit}:{CHART_FILE}"))
        except RuntimeError:  # the commit removed the file
            continue
        if version != current:
            before = _git("rev-parse", f"{bump}^").strip() if bump else _git("rev-parse", "HEAD")
            return before.strip(), version
        bump = commit
    raise RuntimeError(
        f"no earlier chart version than {current} in the history of {CHART_FILE} "
        "(a shallow clone? fetch the history: git fetch --unshallow)"
    )


def checkout(commit: str, dest: Path) -> Path:
    """The sources of `commit` needed to build its images and install its chart."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, *SOURCES],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest
