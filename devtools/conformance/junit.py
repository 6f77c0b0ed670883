"""Counts from ginkgo's JUnit report (run, passed, failed, skipped, and which failed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Results:
    total: int = 0
    passed_names: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped_names: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return len(self.passed_names)

    @property
    def skipped(self) -> int:
        return len(self.skipped_names)

    @property
    def ran(self) -> int:
        return self.passed + len(self.failed)

    def summary(self) -> str:
        return (
            f"{self.ran} run, {self.passed} passed, {len(self.failed)} failed, "
            f"{self.skipped} skipped (of {self.total} specs), {self.seconds:.0f}s"
        )


def parse(path: Path) -> Results:
    """ginkgo's report lists every spec of the binary; the ones outside the focus are
    skipped too, so `skipped` counts them as well (the caller knows the focus)."""
    root = ET.parse(path).getroot()
    results = Results()
    for case in root.iter("testcase"):
        name = case.get("name", "")
        if name.startswith("[SynchronizedBeforeSuite]") or name.startswith("[SynchronizedAfter"):
            continue
        if name.startswith("[ReportBeforeSuite]") or name.startswith("[ReportAfterSuite]"):
            continue
        results.total += 1
        status = case.get("status", "")
        if case.find("failure") is not None or case.find("error") is not None:
            results.failed.append(name)
        elif case.find("skipped") is not None or status in ("skipped", "pending"):
            results.skipped_names.append(name)
        else:
            results.passed_names.append(name)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is not None:
        results.seconds = float(suite.get("time", "0") or 0)
    return results
