"""The agent's own Node, and only it: a watch the API server field-selects on the name.

kopf's `on.event` for Nodes watches every Node and filters by name in the client, so
every heartbeat of every Node would still reach every agent (at 100 agents, one Node
update became ~107 watch events). This is the one watch kopf cannot make:
`watch=true&fieldSelector=metadata.name=<node>`, in a daemon thread, each delivery
handed to the event loop. The first watch has no resourceVersion, so the API server
starts it with the Node as it is (an ADDED event; no list, which RBAC would have to
grant for every Node). The server ends each watch after `server_timeout` seconds and
every read has a deadline (`Kube.watch_node`); the loop then watches again from the
last version seen, and after an error (the API server away, 410 Gone: a Node's own
resourceVersion can be older than the server's watch window, so it is never the
starting point after one) waits a little and starts afresh. A daemon thread:
stopping the agent never waits for a watch to end. The agent's first pass reads its
Node once (`Kube.get_node`) and does not wait for this watch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from cni_operator.kube import Kube, WatchEndedError

log = logging.getLogger("cniwarden.agent")

# ("ADDED" | "MODIFIED" | "DELETED", the Node or None); what it returns is ignored.
Deliver = Callable[[str, dict[str, Any] | None], object]


class OwnNodeWatch:
    def __init__(
        self,
        kube: Kube,
        node_name: str,
        deliver: Deliver,
        server_timeout: int = 240,
        retry_seconds: float = 2.0,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.deliver = deliver
        self.server_timeout = server_timeout
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="own-node-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it does at its next event or deadline (a daemon: the
        process never waits for it)."""
        self._stop.set()

    def _run(self) -> None:
        version = ""  # "": the API server starts with the Node as it is now (an ADDED)
        while not self._stop.is_set():
            try:
                version = self._watch(version)
            except WatchEndedError as error:
                log.info("own Node watch expired (%s); watching it afresh", error)
                version = ""
                self._stop.wait(self.retry_seconds / 4)
            except Exception as error:
                log.warning(
                    "own Node watch failed (%s); again in %.0f s", error, self.retry_seconds
                )
                version = ""
                self._stop.wait(self.retry_seconds)

    def _watch(self, version: str) -> str:
        """One watch until the server ends it; returns the last version seen."""
        for kind, obj in self.kube.watch_node(self.node_name, version, self.server_timeout):
            if self._stop.is_set():
                break
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.deliver(kind, obj)
        return version
