"""Polling for the cluster tests: wait on a real condition, fail with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
