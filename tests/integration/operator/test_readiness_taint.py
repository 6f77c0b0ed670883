"""The CNI-readiness taint on a real node (containerd + kubelet): the agent keeps
`cniwarden.io/agent-not-ready:NoSchedule` on its Node until containerd uses our
config and our plugins answer STATUS ok, re-applies it on a regression (a shadowing
file, a full pool) and removes it on recovery. A pod created while the node is
tainted is not scheduled there until the CNI can serve it; the fault-to-taint and
recovery-to-untaint times are measured and printed (pytest -s shows them)."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cni_operator.readiness import TAINT_KEY

from devtools.localcluster import LocalCluster
from devtools.localcluster.pods import busybox_pod

from .conftest import ROOT, Fleet, real_node_spec, running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]
READINESS_SECONDS = 1.0


def tainted(cluster: LocalCluster, node: str) -> bool:
    body = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
    return any(t.get("key") == TAINT_KEY for t in body["spec"].get("taints") or [])


def timed(fleet: Fleet, check: Any, what: str) -> float:
    started = time.monotonic()
    fleet.wait(check, what, timeout=60, interval=0.05)
    return time.monotonic() - started


def test_taint_follows_cni_readiness_and_holds_pods_off_the_node(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node = cluster.real_nodes[0]
    suffix = secrets.token_hex(3)
    name, bridge = f"ready-{suffix}", f"cwt{suffix}"
    data_dir = node.cni_state_dir / "networks"
    spec = real_node_spec(node, bridge)
    args = {
        node.name: [
            "--readiness-taint",
            "--readiness-seconds",
            str(READINESS_SECONDS),
            "--runtime",
            "containerd",
        ]
    }
    timings: dict[str, float] = {}
    shadow = node.cni_conf_dir / f"00-shadow-{suffix}.conflist"
    pod = f"bb-{suffix}"
    try:
        with running_fleet(
            cluster,
            tmp_path,
            [node.name],
            {node.name: node.host_root},
            args,
            {node.name: node.netns},
        ) as fleet:
            # No config of ours yet: the agent taints its node.
            fleet.wait(lambda: tainted(cluster, node.name), "the taint before any config")
            fleet.apply(name, spec)
            timings["apply -> untaint"] = timed(
                fleet, lambda: not tainted(cluster, node.name), "untainted once ready"
            )
            fleet.wait(
                lambda: (fleet.node_state(node.name).get("cniReadiness") or {}).get("ready"),
                "the report says CNI ready",
            )

            # Fault 1: a foreign file that containerd picks instead of ours.
            loopback = {"cniVersion": "1.0.0", "name": "shadow", "plugins": [{"type": "loopback"}]}
            shadow.write_text(json.dumps(loopback))
            timings["shadowing file -> taint"] = timed(
                fleet, lambda: tainted(cluster, node.name), "tainted on shadowing"
            )
            message = fleet.wait(
                lambda: (
                    (fleet.node_state(node.name).get("cniReadiness") or {}).get("message")
                    if not (fleet.node_state(node.name).get("cniReadiness") or {}).get("ready")
                    else None
                ),
                "the report says why",
            )
            # A pod created now is not placed on the node (the scheduler sees the taint).
            body = busybox_pod(pod, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
            del body["spec"]["nodeName"]
            body["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node.name}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            fleet.wait(
                lambda: any(
                    c.get("reason") == "Unschedulable"
                    for c in json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)[
                        "status"
                    ].get("conditions")
                    or []
                ),
                "the pod held off the tainted node",
            )
            shadow.unlink()
            timings["shadow removed -> untaint"] = timed(
                fleet, lambda: not tainted(cluster, node.name), "untainted after the fix"
            )
            cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s")
            got = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)
            pod_ip = ipaddress.IPv4Address(got["status"]["podIP"])
            assert (data_dir / name / str(pod_ip)).exists(), "the pod's address is ours"

            # Fault 2: the pool full (host-local's STATUS answers 50).
            cidr = ipaddress.IPv4Network(
                cluster.kubectl("get", "node", node.name, "-o", "jsonpath={.spec.podCIDR}").stdout
            )
            store = data_dir / name
            filled = []
            for ip in list(cidr.hosts())[1:]:
                lease = store / str(ip)
                if not lease.exists():
                    lease.write_text(f"filler-{suffix}\r\neth0")
                    filled.append(lease)
            timings["pool full -> taint"] = timed(
                fleet, lambda: tainted(cluster, node.name), "tainted on a full pool"
            )
            for lease in filled:
                lease.unlink()
            timings["pool freed -> untaint"] = timed(
                fleet, lambda: not tainted(cluster, node.name), "untainted with room again"
            )
            print(f"\nreadiness taint timings (interval {READINESS_SECONDS:g} s):")
            for what, seconds in timings.items():
                print(f"  {what}: {seconds:.2f} s")
            assert "does not use a cniwarden config" in message
            cluster.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s", check=False)
            fleet.delete(name)
    finally:
        shadow.unlink(missing_ok=True)
        cluster.kubectl("delete", "pod", pod, "--ignore-not-found", "--timeout=60s", check=False)
        # Leave the shared node as we found it: no taint of ours.
        cluster.kubectl("taint", "node", node.name, f"{TAINT_KEY}-", check=False)


def in_node(node: Any, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={node.netns}", "--", *command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def readiness_of(fleet: Fleet, node: str) -> dict[str, Any]:
    return fleet.node_state(node).get("cniReadiness") or {}


def test_probe_keeps_the_taint_while_add_fails_though_status_is_ok(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The gap STATUS leaves: the bridge's name taken by another link on the node
    (a veth here). STATUS answers ok, every ADD fails; the probe ADD + CHECK + DEL
    keeps the taint, finds the regression at its interval, and the fix untaints."""
    node = cluster.real_nodes[0]
    suffix = secrets.token_hex(3)
    name, bridge = f"probe-{suffix}", f"cwp{suffix}"
    data_dir = node.cni_state_dir / "networks"
    spec = real_node_spec(node, bridge, loopback=False)
    interval = 5.0  # the probe again this often once passed (300 s by default)
    args = {
        node.name: [
            "--readiness-taint",
            "--readiness-seconds",
            str(READINESS_SECONDS),
            "--runtime",
            "containerd",
            "--readiness-probe-seconds",
            str(interval),
        ]
    }

    def take_the_name() -> None:
        done = in_node(node, "ip", "link", "add", bridge, "type", "veth", "peer", f"cwq{suffix}")
        assert done.returncode == 0, done.stderr

    def probe_failed() -> dict[str, Any] | None:
        got = readiness_of(fleet, node.name)
        probe = got.get("probe") or {}
        return got if probe.get("ok") is False and not got.get("ready") else None

    timings: dict[str, float] = {}
    probe_netns = node.host_root / "run/netns"
    pod = f"bb-{suffix}"
    try:
        take_the_name()
        with running_fleet(
            cluster,
            tmp_path,
            [node.name],
            {node.name: node.host_root},
            args,
            {node.name: node.netns},
        ) as fleet:
            fleet.wait(lambda: tainted(cluster, node.name), "the taint before any config")
            started = time.monotonic()
            fleet.apply(name, spec)
            failed = fleet.wait(probe_failed, "the probe's ADD fails")
            timings["apply (ADD broken) -> probe failed, still tainted"] = (
                time.monotonic() - started
            )
            # Everything else says ready: the probe alone keeps the taint.
            assert failed["message"].startswith("probe ADD of "), failed["message"]
            assert "cniwarden-bridge" in failed["probe"]["message"]
            assert tainted(cluster, node.name)
            # A pod bound to the node (nodeName: no scheduler, so no taint) fails its
            # sandbox; `cniwarden doctor --kubeconfig` shows the kubelet's events for it.
            body = busybox_pod(pod, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            report = fleet.wait(
                lambda: sandbox_failures(cluster, node, pod), "doctor's events", 120
            )
            (seen,) = [f for f in report["cluster"]["failedCreatePodSandBox"] if pod in f["pod"]]
            assert bridge in seen["message"] or "cniwarden-bridge" in seen["message"], seen
            problem = next(p for p in report["problems"] if p["code"] == "FailedCreatePodSandBox")
            assert problem["fix"]
            assert tainted(cluster, node.name), "still tainted, several verdicts later"
            assert not readiness_of(fleet, node.name).get("ready")

            # The fix: the name free again; the failed probe is retried (10 s).
            started = time.monotonic()
            done = in_node(node, "ip", "link", "del", bridge)
            assert done.returncode == 0, done.stderr
            fleet.wait(lambda: not tainted(cluster, node.name), "untainted once ADD works", 90)
            timings["name freed -> untaint"] = time.monotonic() - started
            ok = fleet.wait(
                lambda: (r := readiness_of(fleet, node.name)).get("ready") and r,
                "the report says ready, with the probe",
            )
            assert ok["probe"]["ok"] is True, ok
            assert ok["probe"]["containerID"].startswith(f"cniwarden-probe-{node.name}-")

            # A regression the probe alone sees, at its interval: the bridge replaced.
            started = time.monotonic()
            in_node(node, "ip", "link", "del", bridge)
            take_the_name()
            fleet.wait(lambda: tainted(cluster, node.name), "tainted again by the probe", 90)
            timings["ADD broken -> taint (probe interval 5 s)"] = time.monotonic() - started
            started = time.monotonic()
            in_node(node, "ip", "link", "del", bridge)
            fleet.wait(lambda: not tainted(cluster, node.name), "untainted again", 90)
            timings["name freed -> untaint (2)"] = time.monotonic() - started

            # Nothing of the probes left between probes: no lease, no scratch netns.
            def nothing_left() -> bool:
                leases = [p for p in (data_dir / name).glob("[0-9]*")]
                ours = [p for p in leases if p.read_text().startswith("cniwarden-probe-")]
                return not ours and not list(probe_netns.glob("cniwarden-probe-*"))

            fleet.wait(nothing_left, "no probe lease or netns between probes")
            fleet.delete(name)
        print(f"\nreadiness probe taint timings (verdict every {READINESS_SECONDS:g} s):")
        for what, seconds in timings.items():
            print(f"  {what}: {seconds:.2f} s")
    finally:
        cluster.kubectl("delete", "pod", pod, "--ignore-not-found", "--timeout=60s", check=False)
        in_node(node, "ip", "link", "del", bridge)
        cluster.kubectl("taint", "node", node.name, f"{TAINT_KEY}-", check=False)


def sandbox_failures(cluster: LocalCluster, node: Any, pod: str) -> dict[str, Any] | None:
    """`cniwarden doctor --json --kubeconfig` on the node, once it lists `pod`'s
    FailedCreatePodSandBox events."""
    done = subprocess.run(
        [sys.executable, "-m", "cni_operator.cli", "doctor", "--json", "--no-journal",
         "--host-root", str(node.host_root), "--runtime", "containerd",
         "--kubeconfig", str(cluster.kubeconfig), "--node-name", node.name],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return None
    failures = (report.get("cluster") or {}).get("failedCreatePodSandBox") or []
    return report if any(pod in f["pod"] for f in failures) else None
