"""The agent's and controller's metrics follow their reports, and /metrics serves them."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

from cni_operator.metrics import AgentMetrics, ControllerMetrics

from node_plugin.server.metrics import ServerMetrics


def status(used: int, leaked: int, blocked: bool = False) -> dict[str, object]:
    return {
        "ipPools": [
            {"network": "n", "rangeSet": 0, "used": used, "size": 253, "leaked": leaked},
        ],
        "attachments": [{"network": "n", "count": used}],
        "problems": [
            {"code": "LeakedLeases", "severity": "Warning"},
            {"code": "LeakedLeases", "severity": "Warning"},
        ],
        "shadowingFiles": ["/etc/cni/net.d/00-x.conflist"],
        "networks": [{"name": "n", "state": "Blocked" if blocked else "Applied"}],
        "cniReadiness": {"ready": not blocked},
    }


def test_agent_gauges_follow_the_report_and_forget_gone_networks() -> None:
    metrics = AgentMetrics()
    metrics.update(status(7, 2, blocked=True))
    value = metrics.registry.get_sample_value
    labels = {"network": "n", "range_set": "0"}
    assert value("cniwarden_agent_pool_used_addresses", labels) == 7
    assert value("cniwarden_agent_pool_size_addresses", labels) == 253
    assert value("cniwarden_agent_leaked_leases", labels) == 2
    assert value("cniwarden_agent_attachments", {"network": "n"}) == 7
    assert value("cniwarden_agent_problems", {"code": "LeakedLeases", "severity": "Warning"}) == 2
    assert value("cniwarden_agent_shadowing_files") == 1
    assert value("cniwarden_agent_gate_holds") == 1
    assert value("cniwarden_agent_cni_ready") == 0
    metrics.update({"networks": []})
    assert value("cniwarden_agent_pool_used_addresses", labels) is None
    assert value("cniwarden_agent_gate_holds") == 0


def test_controller_counts_networks_by_condition() -> None:
    metrics = ControllerMetrics()
    ready = {"type": "Ready", "status": "True"}
    pressed = {"type": "IPPoolPressure", "status": "True"}
    metrics.update("a", {"conditions": [ready, pressed], "poolUsagePercent": 95})
    metrics.update("b", {"conditions": [ready]})
    value = metrics.registry.get_sample_value
    assert value("cniwarden_controller_networks", {"condition": "Ready", "status": "True"}) == 2
    labels = {"condition": "IPPoolPressure", "status": "True"}
    assert value("cniwarden_controller_networks", labels) == 1
    assert value("cniwarden_controller_pool_usage_percent", {"network": "a"}) == 95
    metrics.update("a", None)
    assert value("cniwarden_controller_networks", labels) == 0
    assert value("cniwarden_controller_pool_usage_percent", {"network": "a"}) is None


def test_metrics_are_served_over_http() -> None:
    metrics = AgentMetrics()
    metrics.update(status(3, 0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        metrics.close()
    assert 'cniwarden_agent_pool_used_addresses{network="n",range_set="0"} 3.0' in text


def test_every_metric_the_dashboard_graphs_is_exported() -> None:
    registries = (AgentMetrics().registry, ControllerMetrics().registry, ServerMetrics().registry)
    families = {family.name for registry in registries for family in registry.collect()}
    root = Path(__file__).resolve().parents[3]
    dashboard = json.loads((root / "charts/cniwarden/dashboards/cniwarden.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    graphed = {
        re.sub(r"_(bucket|count|sum|total)$", "", name)
        for e in exprs
        for name in re.findall(r"cniwarden_[a-z_]+", e)
    }
    assert len(graphed) >= 10
    assert graphed - families == set()
