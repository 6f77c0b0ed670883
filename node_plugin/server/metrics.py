"""The cni-server's Prometheus metrics (prometheus_client, its own registry).

Verb latency by plugin, verb and result code (0 or the CNI error code), requests in
flight, queued DELs and the reaper's backlog. The gauges are read when scraped
(callbacks), so a request pays only one histogram observation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

# CNI verbs take ~1 ms (server, no netlink) to seconds (a bridge ADD under load).
VERBS = frozenset({"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)


def result_code(exit_code: int, stdout: bytes) -> str:
    """ "0" on success, else the CNI error code the plugin printed (or "exit<N>")."""
    if exit_code == 0:
        return "0"
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        code = None
    return str(code) if isinstance(code, int) else f"exit{exit_code}"


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._http: WSGIServer | None = None
        self.latency = Histogram(
            "cniwarden_cni_request_duration_seconds",
            "CNI requests served, by plugin, verb and result code (0: success)",
            ["plugin", "verb", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "cniwarden_cni_requests_in_flight",
            "CNI requests received and not yet answered",
            registry=self.registry,
        )
        self.del_queue = Gauge(
            "cniwarden_cni_del_queue_depth",
            "DELs the shim queued while the server was down, not yet replayed",
            registry=self.registry,
        )
        self.reaper_backlog = Gauge(
            "cniwarden_cni_reaper_backlog",
            "network namespaces of answered DELs waiting to be swept",
            registry=self.registry,
        )

    def bind(
        self,
        in_flight: Callable[[], float],
        del_queue: Callable[[], float],
        reaper_backlog: Callable[[], float],
    ) -> None:
        self.in_flight.set_function(in_flight)
        self.del_queue.set_function(del_queue)
        self.reaper_backlog.set_function(reaper_backlog)

    def observe(
        self, plugin: str, verb: str, exit_code: int, stdout: bytes, seconds: float
    ) -> None:
        self.latency.labels(plugin, verb, result_code(exit_code, stdout)).observe(seconds)

    def serve(self, address: str) -> None:
        """Serve /metrics on `host:port` (a daemon thread of prometheus_client)."""
        host, _, port = address.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
