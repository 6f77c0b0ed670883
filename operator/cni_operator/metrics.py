"""The agent's and the controller's Prometheus metrics (prometheus_client, each its
own registry). They are set from the reports the components already build (a
CNINodeState status, a CNINetwork status), so a metric never says something the
report does not."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cni_operator.conditions import CONDITION_TYPES, STATE_BLOCKED

PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Exporter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: WSGIServer | None = None

    def serve(self, address: str) -> None:
        """Serve /metrics on `host:port` from a daemon thread."""
        host, _, port = address.rpartition(":")
        self._http, _ = start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class AgentMetrics(Exporter):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.pool_used = Gauge(
            "cniwarden_agent_pool_used_addresses",
            "addresses leased in a host-local range set of a managed network",
            ["network", "range_set"],
            registry=r,
        )
        self.pool_size = Gauge(
            "cniwarden_agent_pool_size_addresses",
            "allocatable addresses of a host-local range set of a managed network",
            ["network", "range_set"],
            registry=r,
        )
        self.leaked = Gauge(
            "cniwarden_agent_leaked_leases",
            "leases whose sandbox the runtime no longer has, older than the grace",
            ["network", "range_set"],
            registry=r,
        )
        self.reclaimed = Counter(
            "cniwarden_agent_leases_reclaimed",
            "leaked leases released by leak repair",
            registry=r,
        )
        self.shadowing = Gauge(
            "cniwarden_agent_shadowing_files",
            "foreign config files that a runtime uses instead of ours",
            registry=r,
        )
        self.gate_holds = Gauge(
            "cniwarden_agent_gate_holds",
            "networks whose unsafe change is held on this node (live attachments)",
            registry=r,
        )
        self.attachments = Gauge(
            "cniwarden_agent_attachments",
            "attachments (container, interface) per network on this node",
            ["network"],
            registry=r,
        )
        self.problems = Gauge(
            "cniwarden_agent_problems",
            "problems in this node's report, by code and severity",
            ["code", "severity"],
            registry=r,
        )
        self.pass_duration = Histogram(
            "cniwarden_agent_pass_duration_seconds",
            "one reconcile pass (scan, apply, report)",
            buckets=PASS_BUCKETS,
            registry=r,
        )
        self.pass_failures = Counter(
            "cniwarden_agent_pass_failures", "reconcile passes that raised", registry=r
        )
        self.last_error = Gauge(
            "cniwarden_agent_last_error_timestamp_seconds",
            "when a pass last failed (unix time; 0: never)",
            registry=r,
        )
        self.cni_ready = Gauge(
            "cniwarden_agent_cni_ready",
            "1 when this node's CNI answers STATUS ok through our config (readiness taint off)",
            registry=r,
        )

    def update(self, status: Mapping[str, Any]) -> None:
        """Every gauge from one CNINodeState status (labels of gone networks vanish)."""
        for gauge in (self.pool_used, self.pool_size, self.leaked, self.attachments, self.problems):
            gauge.clear()
        for pool in status.get("ipPools") or []:
            labels = (str(pool.get("network")), str(pool.get("rangeSet")))
            self.pool_used.labels(*labels).set(float(pool.get("used") or 0))
            self.pool_size.labels(*labels).set(float(pool.get("size") or 0))
            if "leaked" in pool:
                self.leaked.labels(*labels).set(float(pool["leaked"]))
        for item in status.get("attachments") or []:
            self.attachments.labels(str(item.get("network"))).set(float(item.get("count") or 0))
        counts: dict[tuple[str, str], int] = {}
        for problem in status.get("problems") or []:
            key = (str(problem.get("code")), str(problem.get("severity")))
            counts[key] = counts.get(key, 0) + 1
        for (code, severity), n in counts.items():
            self.problems.labels(code, severity).set(n)
        self.shadowing.set(len(status.get("shadowingFiles") or []))
        self.gate_holds.set(
            sum(1 for n in status.get("networks") or [] if n.get("state") == STATE_BLOCKED)
        )
        readiness = status.get("cniReadiness")
        if isinstance(readiness, Mapping):
            self.cni_ready.set(1 if readiness.get("ready") else 0)


class ControllerMetrics(Exporter):
    def __init__(self) -> None:
        super().__init__()
        self.networks = Gauge(
            "cniwarden_controller_networks",
            "CNINetworks by condition and its status",
            ["condition", "status"],
            registry=self.registry,
        )
        self.pool_usage = Gauge(
            "cniwarden_controller_pool_usage_percent",
            "the fullest node's fullest range set, per CNINetwork",
            ["network"],
            registry=self.registry,
        )
        self._by_network: dict[str, Mapping[str, Any]] = {}

    def update(self, name: str, status: Mapping[str, Any] | None) -> None:
        """Record one network's status (None: deleted) and recount."""
        if status is None:
            self._by_network.pop(name, None)
        else:
            self._by_network[name] = status
        self.networks.clear()
        self.pool_usage.clear()
        counts = {(t, s): 0 for t in CONDITION_TYPES for s in ("True", "False")}
        for network, known in self._by_network.items():
            for cond in known.get("conditions") or []:
                key = (str(cond.get("type")), str(cond.get("status")))
                counts[key] = counts.get(key, 0) + 1
            if "poolUsagePercent" in known:
                self.pool_usage.labels(network).set(float(known["poolUsagePercent"]))
        for (kind, value), n in counts.items():
            self.networks.labels(kind, value).set(n)
