"""Download a declared binary with a deadline for the whole transfer and a size cap.

urllib's `timeout` bounds each socket operation, not the transfer: a server that
sends one byte per second keeps a download alive forever, and nothing bounds its
size. Here every connection is made with the time left, and before each read the
socket's timeout is set to the time left, so the whole download (redirects
included) ends by the deadline; reads stop one chunk past the cap.

Hand-written on urllib rather than a client library: the agent needs one GET with
these two bounds, proxies from the environment and redirects, all of which urllib
has; none of our dependencies bounds a transfer's total time (urllib3's `total`
timeout is per request phase, not the body).
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

CHUNK = 64 * 1024


class FetchError(RuntimeError):
    """A download that failed, timed out or was too large; the message says which."""


@dataclass(frozen=True)
class FetchLimits:
    deadline_seconds: float = 120.0
    max_bytes: int = 256 * 1024 * 1024


class _Transfer:
    """One download: its deadline, and the socket of its latest connection."""

    def __init__(self, limits: FetchLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.deadline_seconds
        self.sock: socket.socket | None = None

    def time_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def connection(self, base: type[http.client.HTTPConnection]) -> Any:
        transfer = self

        class Connection(base):  # type: ignore[valid-type,misc]
            """Connects with the time left and remembers its socket for the reads."""

            def __init__(self, host: str, **kwargs: Any) -> None:
                kwargs["timeout"] = transfer.time_left()
                super().__init__(host, **kwargs)

            def connect(self) -> None:
                super().connect()
                transfer.sock = self.sock

        return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, transfer: _Transfer) -> None:
        super().__init__()
        self.transfer = transfer

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.transfer.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, transfer: _Transfer) -> None:
        super().__init__()
        self.transfer = transfer

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.transfer.connection(http.client.HTTPSConnection), req)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects stay on http(s): no other handler here bounds its transfer."""

    def redirect_request(  # noqa: PLR0917  (urllib's signature)
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not newurl.lower().startswith(("http://", "https://")):
            raise FetchError(f"redirected to {newurl!r}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read(response: http.client.HTTPResponse, transfer: _Transfer, url: str) -> bytes:
    cap = transfer.limits.max_bytes
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise FetchError(f"{url} is {int(declared)} bytes, more than the {cap} allowed")
    chunks: list[bytes] = []
    size = 0
    while True:
        if transfer.sock is not None:
            transfer.sock.settimeout(transfer.time_left())
        chunk = response.read1(min(CHUNK, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise FetchError(f"{url} is more than the {cap} bytes allowed")
        chunks.append(chunk)


def fetch_url(url: str, limits: FetchLimits) -> bytes:
    """GET `url` (http or https) within `limits`, or raise FetchError saying why."""
    if not url.lower().startswith(("http://", "https://")):
        raise FetchError(f"{url!r}: only http(s) URLs are supported")
    transfer = _Transfer(limits)
    opener = urllib.request.build_opener(
        _HTTPHandler(transfer), _HTTPSHandler(transfer), _RedirectHandler()
    )
    try:
        with opener.open(url, timeout=transfer.time_left()) as response:
            return _read(response, transfer, url)
    except TimeoutError:
        raise FetchError(
            f"{url}: not downloaded within {limits.deadline_seconds:g}s "
            "(the deadline is for the whole transfer)"
        ) from None
    except urllib.error.HTTPError as error:
        raise FetchError(f"{url}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(
                f"{url}: not downloaded within {limits.deadline_seconds:g}s "
                "(the deadline is for the whole transfer)"
            ) from None
        raise FetchError(f"{url}: {reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(f"{url}: {error}") from None
