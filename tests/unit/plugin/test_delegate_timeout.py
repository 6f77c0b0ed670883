"""How long a delegated IPAM plugin may run (node_plugin.ipam.delegate.timeout)."""

from __future__ import annotations

import pytest

from node_plugin.cni.errors import INVALID_ENV, CniError
from node_plugin.ipam import delegate


def test_standalone_without_a_deadline_gets_the_default_or_the_environment() -> None:
    assert delegate.timeout({}, None, now=100.0) == delegate.DEFAULT_TIMEOUT
    assert delegate.timeout({delegate.TIMEOUT_ENV: "2.5"}, None, now=100.0) == 2.5


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "nan"])
def test_a_timeout_that_is_not_a_positive_number_is_refused_by_name(raw: str) -> None:
    with pytest.raises(CniError) as refused:
        delegate.timeout({delegate.TIMEOUT_ENV: raw}, None, now=0.0)
    assert refused.value.code == INVALID_ENV
    assert delegate.TIMEOUT_ENV in refused.value.msg


def test_a_deadline_leaves_time_to_undo_and_answer() -> None:
    # The server's 25 s request: the delegate is killed 2 s before the deadline.
    assert delegate.timeout({}, deadline=125.0, now=100.0) == pytest.approx(23.0)
    # A short deadline keeps back a fifth.
    assert delegate.timeout({}, deadline=104.0, now=100.0) == pytest.approx(3.2)
    # The shorter of the environment's limit and the deadline's wins.
    assert delegate.timeout({delegate.TIMEOUT_ENV: "5"}, deadline=125.0, now=100.0) == 5.0


def test_a_request_already_late_still_gives_its_delegate_a_moment() -> None:
    assert delegate.timeout({}, deadline=99.0, now=100.0) == delegate.MIN_TIMEOUT
