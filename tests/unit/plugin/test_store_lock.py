"""The host-local store's lock has a deadline (issue 11, item 2): a flock held outside
used to hold every request on that network (and a resident server's workers) for ever."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_plugin.cni.errors import CniError
from node_plugin.ipam.store import Store

HOLD = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Store, int]]:
    """A store whose lock another process holds: (store, that process's pid)."""
    store = Store(str(tmp_path), "net")
    store.dir.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store.dir / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield store, holder.pid
    finally:
        holder.kill()
        holder.wait()


def lock_on_a_thread(store: Store, **kwargs: float) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def take() -> None:
        started = time.monotonic()
        try:
            with store.locked(**kwargs):  # type: ignore[arg-type]
                outcome.append("locked")
        except CniError as err:
            outcome.extend([err, time.monotonic() - started])

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread, outcome


def test_a_lock_held_outside_fails_after_the_default_deadline(held: tuple[Store, int]) -> None:
    store, pid = held
    thread, outcome = lock_on_a_thread(store)
    thread.join(20)
    assert not thread.is_alive(), "waited for the lock with no deadline"
    err, waited = outcome
    assert isinstance(err, CniError) and err.code == 5
    assert "is locked by another process for more than 5s" in err.msg
    assert err.details == f"held by pid {pid}"
    assert isinstance(waited, float) and 4.5 < waited < 15


def test_requests_of_this_process_behind_it_fail_by_their_deadline_too(
    held: tuple[Store, int],
) -> None:
    """The second request waits on the in-process lock the first one holds while it
    waits for the flock: that wait is bounded as well."""
    store, _ = held
    # Whichever takes the in-process lock first, both end with 5 by their deadlines.
    first, first_outcome = lock_on_a_thread(store, timeout=2.0)
    second, second_outcome = lock_on_a_thread(store, timeout=0.5)
    for thread in (first, second):
        thread.join(20)
        assert not thread.is_alive()
    for outcome in (first_outcome, second_outcome):
        err = outcome[0]
        assert isinstance(err, CniError) and err.code == 5, outcome


def test_a_free_lock_is_taken_at_once(tmp_path: Path) -> None:
    store = Store(str(tmp_path), "net")
    started = time.monotonic()
    with store.locked():
        pass
    assert time.monotonic() - started < 1
