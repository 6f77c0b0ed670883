"""How much each fuzz target runs: a small fixed, derandomized budget in CI (the same
examples every run, so it is never flaky), or as many examples as CNIWARDEN_FUZZ_EXAMPLES
says, randomized and remembered in .hypothesis/ (`make fuzz`)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG_RUN = int(os.environ.get("CNIWARDEN_FUZZ_EXAMPLES", "0"))


def budget(ci_examples: int) -> settings:
    if LONG_RUN:
        return settings(
            max_examples=LONG_RUN,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=ci_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
