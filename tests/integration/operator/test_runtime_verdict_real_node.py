"""Issue 17's scenario on a real node (containerd + kubelet): a truncated
`.00-dot.conflist` lands in the node's net.d next to a working config. containerd
reads dot-files and fails, kubelet turns the Node NotReady, and the node's
CNINodeState must say the node is broken within seconds, naming what the runtime
said, never "healthy, 0 problems". Removing the file brings it all back.

The agent runs as a real process on the node's host root; it finds the node's
containerd at <host_root>/run/containerd/containerd.sock as on a real node."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localcluster import LocalCluster

from .conftest import Fleet, running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]
TRUNCATED = b'{"cniVersion":"1.0.0","name":"dot","plugins":[{"type":"bri'
# The agent asks CRI Status every second and lets it settle 2 s after a change of
# net.d; a pass and a publish follow at once.
REPORT_SECONDS = 15.0
# kubelet checks the runtime every 5 s and writes the Node's status within 10 s.
KUBELET_SECONDS = 90.0


def ready(cluster: LocalCluster, node: str) -> bool | None:
    body = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
    for condition in body["status"]["conditions"]:
        if condition["type"] == "Ready":
            return {"True": True, "False": False}.get(condition["status"])
    return None


def broken_report(fleet: Fleet, node: str) -> dict[str, Any] | None:
    """The node report once it is unhealthy with an error about the runtime or the file."""
    state = fleet.node_state(node)
    if state.get("healthy") is not False:
        return None
    for problem in state.get("problems") or []:
        said = problem["code"] == "RuntimeDisagrees" or ".00-dot.conflist" in problem["message"]
        if problem["severity"] == "error" and said:
            return state
    return None


def test_truncated_dot_file_turns_the_report_unhealthy_within_seconds(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node = cluster.real_nodes[0]
    suffix = secrets.token_hex(3)
    name = f"truth-{suffix}"
    spec: dict[str, Any] = {
        "priority": 10,
        "cniVersion": "1.0.0",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"cwt{suffix}",
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "usePodCIDR"}]],
                    "dataDir": str(node.cni_state_dir / "networks"),
                },
            }
        ],
    }
    dot = node.cni_conf_dir / ".00-dot.conflist"
    with running_fleet(cluster, tmp_path, [node.name], {node.name: node.host_root}) as fleet:
        fleet.apply(name, spec)
        fleet.wait(lambda: fleet.ready(name), "network Ready on the real node", timeout=60)
        fleet.wait(lambda: ready(cluster, node.name), "kubelet reports the node Ready", 90)
        state = fleet.wait(
            lambda: (s := fleet.node_state(node.name)).get("healthy") and s,
            "a healthy report naming the runtime",
        )
        runtime = state["runtime"]
        assert runtime["name"] == "containerd" and runtime["judgedBy"] == ["containerd"]
        assert runtime["endpoint"] == "/run/containerd/containerd.sock"
        assert state["runtimeVerdict"]["cri"]["networkReady"] is True
        try:
            started = time.monotonic()
            dot.write_bytes(TRUNCATED)
            report = fleet.wait(
                lambda: broken_report(fleet, node.name),
                "CNINodeState unhealthy with the runtime's verdict",
                timeout=REPORT_SECONDS,
            )
            reported = time.monotonic() - started
            # The runtime's own word lands in the same report (the agent asks it every
            # second, and lets it settle 2 s after a change of net.d).
            report = fleet.wait(
                lambda: (
                    (s := broken_report(fleet, node.name))
                    and s["runtimeVerdict"]["cri"].get("networkReady") is False
                    and s
                ),
                "the report carries CRI's NetworkReady=false",
                timeout=REPORT_SECONDS,
            )
            cri_seen = time.monotonic() - started
            fleet.wait(
                lambda: ready(cluster, node.name) is False,
                "kubelet reports the node NotReady",
                timeout=KUBELET_SECONDS,
            )
            not_ready = time.monotonic() - started
            seen = fleet.wait(
                lambda: (
                    (s := fleet.node_state(node.name))
                    .get("runtimeVerdict", {})
                    .get("kubelet", {})
                    .get("ready")
                    is False
                    and s
                ),
                "the report carries kubelet's NotReady",
            )
            kubelet_message = seen["runtimeVerdict"]["kubelet"]["message"]
            assert "NetworkReady=false" in kubelet_message, kubelet_message
            print(
                f"\ntruncated .00-dot.conflist: CNINodeState unhealthy after {reported:.1f} s, "
                f"with CRI's NetworkReady=false after {cri_seen:.1f} s, "
                f"kubelet NotReady after {not_ready:.1f} s"
            )
            if report["runtimes"]["containerd"]["healthy"]:
                first = report["problems"][0]
                assert first["code"] == "RuntimeDisagrees", report["problems"]
                assert "our model predicted healthy" in first["message"]
                events = cluster.kubectl(
                    "get",
                    "events",
                    "-A",
                    "--field-selector",
                    f"reason=RuntimeDisagrees,involvedObject.name={node.name}",
                    "-o",
                    "json",
                ).stdout
                assert json.loads(events)["items"], "an Event says the runtime disagrees"
        finally:
            dot.unlink(missing_ok=True)
            started = time.monotonic()
            fleet.wait(lambda: ready(cluster, node.name), "node Ready again", KUBELET_SECONDS)
        fleet.wait(
            lambda: fleet.node_state(node.name).get("healthy") is True, "report healthy again"
        )
        print(f"dot-file removed: node Ready again after {time.monotonic() - started:.1f} s")
