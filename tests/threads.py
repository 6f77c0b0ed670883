"""Running test code on a thread of its own: a network namespace entered or unshared
there stays with that thread, never the test runner's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_own_thread(fn: Callable[[], T], timeout: float, what: str) -> T:
    """`fn()` on a new thread: its result, or its exception raised here; fails when it
    is still running after `timeout` seconds."""
    out: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as error:
            failure.append(error)

    worker = threading.Thread(target=body, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"{what} outlived its deadline ({timeout:.0f} s)"
    if failure:
        raise failure[0]
    return out[0]
