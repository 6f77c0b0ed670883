"""The model against the real runtimes: for each corpus layout and each runtime,
what the runtime's CRI Status, CNI config dump and a real pod sandbox say must be
what `runtime_order.predict` says for that runtime's kind and version (see
devtools/runtimes/differential.py for how, docs/runtime-model.md for the table).

One test per (runtime, layout); each runtime serves all its layouts from one
process (faithful: its reloads are stateless), started on first use."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.runtimes.corpus import load_corpus
from devtools.runtimes.daemon import PRIVATE_PATHS, RUNTIMES
from devtools.runtimes.differential import Row, current_model, run_all

pytestmark = pytest.mark.root

LAYOUTS = load_corpus()


@pytest.fixture(scope="module")
def rows() -> Iterator[dict[str, dict[str, Row]]]:
    """Every runtime over the corpus (three runtime processes at a time), once."""
    if os.geteuid() != 0:
        pytest.skip("needs root (runtimes, mount namespaces)")
    for name, spec in RUNTIMES.items():
        missing = spec.missing()
        if missing:
            pytest.fail(f"{name} cannot run: {missing}")
    existed = {p: p.exists() for p in PRIVATE_PATHS}
    with tempfile.TemporaryDirectory(prefix="cniwarden-differential-") as base:
        results = run_all(sorted(RUNTIMES), LAYOUTS, current_model, Path(base))
        yield {name: {row.layout: row for row in items} for name, items in results.items()}
        with open("/proc/self/mountinfo") as mounts:
            left = [line for line in mounts if base in line]
        assert not left, f"mounts left behind: {left}"
    for path, was_there in existed.items():
        assert was_there or not path.exists(), f"{path} was created and left behind"


def test_the_corpus_covers_the_issue() -> None:
    names = {layout.name for layout in LAYOUTS}
    assert len(names) >= 40
    for layout in LAYOUTS:
        assert layout.note, f"{layout.name} has no NOTE"
    for needed in (
        "dot-file-wins",
        "utf8-bom",
        "version-lacking",
        "cni-versions-array",
        "non-semver-version",
        "empty-name-conflist",
        "duplicate-names",
        "conflist-without-plugins",
        "plugins-in-subdir",
        "symlink-dangling",
        "symlink-to-dir",
        "socket",
        "unreadable-mode-000",
        "huge-file",
        "max-conf-num-2",
        "crio-default-network",
    ):
        assert needed in names


# The module's fixture runs every runtime over the corpus within the first test:
# 4.5 min of CPU (user+sys) in all; 27 min of wall time when measured under load
# average 20-50 on the shared 2-core VM (docs/runtime-model.md).
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("layout", [layout.name for layout in LAYOUTS])
def test_model_agrees_with_runtime(
    runtime: str, layout: str, rows: dict[str, dict[str, Row]]
) -> None:
    row = rows[runtime][layout]
    assert row.agrees, (
        f"{runtime} ({row.version}) on {layout}: "
        + "; ".join(row.differences)
        + f"\nruntime: {row.observation}\nmodel: {row.prediction}"
    )
