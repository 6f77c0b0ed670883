"""Downloads of declared binaries: one deadline for the whole transfer and a size
cap (issue 11, item 3), against a loopback server that trickles, stalls, redirects
or never ends. The bounds are the deadline plus a margin for a loaded machine;
without a total deadline each case would run for a minute or forever."""

from __future__ import annotations

import time

import pytest
from cni_operator.api import BinarySource, DeclaredBinary
from cni_operator.node import binaries
from cni_operator.node.atomic import sha256_bytes
from cni_operator.node.fetch import CHUNK, FetchError, FetchLimits, fetch_url

from .loopback_http import endless, redirect, respond, serving, stall, trickle

DEADLINE = 2.0
MARGIN = 3.0  # scheduling on a shared 2-core machine; the slow cases take 60 s or more


def timed_failure(url: str, limits: FetchLimits) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(FetchError) as error:
        fetch_url(url, limits)
    return str(error.value), time.monotonic() - start


def test_a_body_of_one_byte_per_second_is_cut_at_the_total_deadline() -> None:
    with serving({"/slow": trickle(b"x" * 60, every=1.0)}) as server:
        message, elapsed = timed_failure(server.url("/slow"), FetchLimits(DEADLINE, 1 << 20))
    assert "not downloaded within 2s (the deadline is for the whole transfer)" in message
    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f}s with a {DEADLINE}s deadline"


def test_a_stalled_body_is_cut_at_the_total_deadline() -> None:
    with serving({"/stall": stall()}) as server:
        message, elapsed = timed_failure(server.url("/stall"), FetchLimits(DEADLINE, 1 << 20))
    assert "not downloaded within 2s" in message
    assert elapsed < DEADLINE + MARGIN, f"took {elapsed:.1f}s"


def test_the_deadline_spans_redirects() -> None:
    with serving({"/hop": redirect("/slow"), "/slow": trickle(b"x" * 60, every=1.0)}) as server:
        message, elapsed = timed_failure(server.url("/hop"), FetchLimits(DEADLINE, 1 << 20))
        assert server.requests == ["/hop", "/slow"]
    assert "not downloaded within 2s" in message
    assert elapsed < DEADLINE + MARGIN


def test_an_oversized_body_is_refused_by_its_length_or_while_read() -> None:
    cap = 4096
    with serving(
        {
            "/big": respond(b"x" * (cap + 1)),
            "/lies": respond(b"", length=1 << 40),
            "/endless": endless(),
            "/exact": respond(b"y" * cap),
        }
    ) as server:
        limits = FetchLimits(30.0, cap)
        message, _ = timed_failure(server.url("/big"), limits)
        assert f"is {cap + 1} bytes, more than the {cap} allowed" in message
        message, _ = timed_failure(server.url("/lies"), limits)
        assert "more than the 4096 allowed" in message
        message, elapsed = timed_failure(server.url("/endless"), limits)
        assert "is more than the 4096 bytes allowed" in message
        assert elapsed < MARGIN, "an endless body is cut at the cap, not at the deadline"
        assert fetch_url(server.url("/exact"), limits) == b"y" * cap
    assert cap <= CHUNK  # the read that crosses the cap is the last one


def test_redirects_leave_http_never() -> None:
    """Only the http(s) handlers here bound a transfer; urllib would follow ftp://."""
    routes = {"/to-file": redirect("file:///etc/passwd"), "/to-ftp": redirect("ftp://h/x")}
    with serving(routes) as server:
        message, _ = timed_failure(server.url("/to-file"), FetchLimits(5.0, 1 << 20))
        assert "Redirection to url 'file:///etc/passwd' is not allowed" in message
        message, _ = timed_failure(server.url("/to-ftp"), FetchLimits(5.0, 1 << 20))
        assert "redirected to 'ftp://h/x', which is not http(s)" in message


def test_http_errors_say_what_the_server_said() -> None:
    with serving({}) as server:
        message, _ = timed_failure(server.url("/missing"), FetchLimits(5.0, 1 << 20))
    assert "HTTP 404" in message


def test_a_declared_file_source_is_capped_too(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    source = Path(str(tmp_path)) / "plugin"
    source.write_bytes(b"z" * 100)
    declared = DeclaredBinary(
        name="p", sha256=sha256_bytes(b"z" * 100), source=BinarySource(file=str(source))
    )
    with pytest.raises(binaries.BinaryError, match="is 100 bytes, more than the 99 allowed"):
        binaries.fetch_declared(declared, FetchLimits(5.0, 99))
    assert binaries.fetch_declared(declared, FetchLimits(5.0, 100)) == b"z" * 100
