"""The agent's own-Node watch (own_node.py), against a scripted API: where each watch
starts, what is delivered, and how it recovers from a 410 and from an error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cni_operator.kube import WatchEndedError
from cni_operator.own_node import OwnNodeWatch


def node(version: int) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "resourceVersion": str(version)}}


class ScriptedKube:
    """Each watch_node call plays the next script: events, then an exception or the end."""

    def __init__(self, scripts: list[tuple[list[tuple[str, dict[str, Any]]], Exception | None]]):
        self.scripts = scripts
        self.calls: list[tuple[str, str, int]] = []
        self.watch: OwnNodeWatch | None = None

    def watch_node(
        self, name: str, version: str, server_timeout: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self.calls.append((name, version, server_timeout))
        if not self.scripts:
            assert self.watch is not None
            self.watch.stop()
            return
        events, error = self.scripts.pop(0)
        yield from events
        if error is not None:
            raise error


def test_the_watch_starts_fresh_resumes_from_the_last_version_and_recovers() -> None:
    kube = ScriptedKube(
        [
            ([("ADDED", node(5)), ("BOOKMARK", node(9))], None),  # the server's timeout
            ([("MODIFIED", node(12))], WatchEndedError("too old resource version")),
            ([], ConnectionError("API server away")),
            ([("ADDED", node(20)), ("DELETED", node(21))], None),
        ]
    )
    delivered: list[tuple[str, str]] = []
    watch = OwnNodeWatch(
        kube,  # type: ignore[arg-type]
        "n1",
        lambda kind, body: delivered.append((kind, (body or {})["metadata"]["resourceVersion"])),
        server_timeout=240,
        retry_seconds=0.0,
    )
    kube.watch = watch
    watch._run()  # in this thread: it returns once the script asks it to stop
    assert [version for _, version, _ in kube.calls] == ["", "9", "", "", "21"]
    assert all(name == "n1" and timeout == 240 for name, _, timeout in kube.calls)
    assert delivered == [("ADDED", "5"), ("MODIFIED", "12"), ("ADDED", "20"), ("DELETED", "21")]
