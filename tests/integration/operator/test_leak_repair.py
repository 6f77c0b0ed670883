"""Leak repair on a real node: the agent asks the node's containerd (CRI
ListPodSandbox over its gRPC CRI client) which sandboxes live, reports the
leases whose sandbox is gone, reclaims them on its GC schedule, and never touches
the lease of a live pod, even with that pod's result-cache file truncated and its
lease made older than the grace period."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.atomic import sha256_file
from cni_operator.node.cri import RuntimeProbe
from prometheus_client.parser import text_string_to_metric_families

from devtools.localcluster import LocalCluster
from devtools.localcluster.pods import busybox_pod

from .conftest import ROOT, cri_endpoint, real_node_spec, running_fleet

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]
LONG_AGO = 3600.0  # older than any grace: only the runtime's word keeps a lease


def age_lease(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_of(args: dict[str, list[str]]) -> list[str]:
    (flags,) = args.values()
    at = flags.index("--metrics-address")
    return flags[at : at + 2]


def scrape(port: int, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the agent's /metrics, parsed by prometheus_client's own parser."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def pools_of(state: dict[str, Any], network: str) -> list[dict[str, Any]]:
    return [p for p in state.get("ipPools") or [] if p.get("network") == network]


def test_leaked_leases_are_reported_then_reclaimed_and_live_pods_keep_theirs(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    node = cluster.real_nodes[0]
    suffix = secrets.token_hex(3)
    name, bridge = f"leaks-{suffix}", f"cwl{suffix}"
    data_dir = node.cni_state_dir / "networks"
    spec = real_node_spec(node, bridge, ipam={"pressureThreshold": 90, "leaseGraceSeconds": 60})
    # The agent's one gRPC CRI client asks the node's socket ListPodSandbox (no crictl
    # in the image).
    socket_on_node = cri_endpoint(node)
    cri = ["--runtime-endpoint", socket_on_node]
    # First an agent that only reports (GC off), so the leak is seen before repair.
    metrics = ["--metrics-address", f"127.0.0.1:{free_port()}"]
    args = {node.name: [*cri, *metrics, "--gc-interval-seconds", "0"]}
    roots = {node.name: node.host_root}
    # The real-node tier's plugins see this machine's paths while the agent reads under
    # the node's host root: the node's view of dataDir is the same directory.
    mirror = node.host_root / str(data_dir).lstrip("/")
    made = [p for p in mirror.parents if not p.exists()]
    mirror.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    mirror.symlink_to(data_dir, target_is_directory=True)
    try:
        run_faults(cluster, tmp_path, node, name, spec, cri, args, roots, data_dir)
    finally:
        mirror.unlink()
        for directory in made:  # deepest first
            directory.rmdir()


def run_faults(
    cluster: LocalCluster,
    tmp_path: Path,
    node: Any,
    name: str,
    spec: dict[str, Any],
    cri: list[str],
    args: dict[str, list[str]],
    roots: dict[str, Path],
    data_dir: Path,
) -> None:
    suffix = name.rsplit("-", 1)[-1]
    port = int(metrics_of(args)[1].rsplit(":", 1)[1])
    labels = {"network": name, "range_set": "0"}
    with running_fleet(cluster, tmp_path, [node.name], roots, args) as fleet:
        fleet.apply(name, spec)
        fleet.wait(lambda: fleet.ready(name), "network Ready on the real node", timeout=60)
        fleet.wait(
            lambda: scrape(port, "cniwarden_agent_pool_used_addresses", labels) == 0,
            "the agent's /metrics shows the empty pool",
        )
        pod = f"bb-{suffix}"
        body = busybox_pod(pod, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        try:
            cluster.kubectl("wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=120s")
            pod_ip = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)["status"][
                "podIP"
            ]
            store = data_dir / name
            live_lease = store / pod_ip
            assert live_lease.exists()
            fleet.wait(
                lambda: scrape(port, "cniwarden_agent_pool_used_addresses", labels) == 1,
                "the pod's address in the agent's /metrics",
            )
            # Fault 1: the live pod's result cache truncated, its lease made old.
            (cache,) = (node.cni_state_dir / "results").glob(f"{name}-*-eth0")
            cache.write_bytes(b"")
            age_lease(live_lease, LONG_AGO)
            # Fault 2: leases of sandboxes that died with the node (a reboot keeps
            # host-local's files): two old, one young (an ADD could be in flight).
            net = ipaddress.IPv4Network(
                cluster.kubectl("get", "node", node.name, "-o", "jsonpath={.spec.podCIDR}").stdout
            )
            hosts = list(net.hosts())
            leaked = [str(hosts[-2]), str(hosts[-3])]
            young = str(hosts[-4])
            for ip in [*leaked, young]:
                owner = secrets.token_hex(32)
                (store / ip).write_text(f"{owner}\r\neth0")
            for ip in leaked:
                age_lease(store / ip, LONG_AGO)

            # Reported first (the CLI's dry run asks the same containerd) ...
            dry = subprocess.run(
                [sys.executable, "-m", "cni_operator.cli", "gc", "--host-root",
                 str(node.host_root), *cri, "--dry-run", "--json"],
                capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
            )  # fmt: skip
            assert dry.returncode == 0, dry.stderr
            report = json.loads(dry.stdout)
            assert report["sandboxes"] >= 1
            assert sorted(r["ip"] for r in report["released"]) == sorted(leaked)

            reported = fleet.wait(
                lambda: next(
                    (
                        p
                        for p in pools_of(fleet.node_state(node.name), name)
                        if p.get("leaked") == len(leaked)
                    ),
                    None,
                ),
                "the agent reports the leaked leases",
            )
            assert sorted(x["ip"] for x in reported["leakedLeases"]) == sorted(leaked)
            assert all((store / ip).exists() for ip in leaked)  # GC off: only reported
            fleet.wait(
                lambda: scrape(port, "cniwarden_agent_leaked_leases", labels) == len(leaked),
                "the leaked leases in the agent's /metrics",
            )
            # The doctor's IP-exhaustion branch on the node, against the same containerd.
            doctor = subprocess.run(
                [sys.executable, "-m", "cni_operator.cli", "doctor", "--json", "--no-journal",
                 "--host-root", str(node.host_root), *cri, "--runtime", "containerd"],
                capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
            )  # fmt: skip
            found = json.loads(doctor.stdout)
            (doctor_pool,) = [p for p in found["ipPools"]["pools"] if p["network"] == name]
            assert doctor_pool["leaked"] == len(leaked), doctor_pool
            assert "LeakedLeases" in {p["code"] for p in found["problems"]}

            # ... then the agent, restarted with its GC on, reclaims them on its schedule.
            fleet.stop_agent(node.name)
            fleet.agent_args[node.name] = [*cri, *metrics_of(args), "--gc-interval-seconds", "2"]
            fleet.start_agent(node.name)

            def reclaimed() -> bool:
                return not any((store / ip).exists() for ip in leaked)

            fleet.wait(reclaimed, "leaked leases reclaimed by the agent", timeout=60)
            fleet.wait(
                lambda: scrape(port, "cniwarden_agent_leases_reclaimed_total", {}) == len(leaked),
                "the reclaimed leases in the restarted agent's /metrics",
            )
            assert live_lease.exists(), "the live pod's lease was released"
            assert (store / young).exists(), "a lease younger than the grace was released"
            state = fleet.wait(
                lambda: next(
                    (
                        fleet.node_state(node.name)
                        for p in pools_of(fleet.node_state(node.name), name)
                        if p.get("leaked") == 0 and p.get("used") == 2
                    ),
                    None,
                ),
                "the report shows the freed addresses",
            )
            assert state["leakCheck"]["runtime"] == "Listed"
            assert state["leakCheck"]["reclaimedTotal"] >= len(leaked)
            (pool,) = pools_of(state, name)
            assert pool["size"] == net.num_addresses - 3  # network, broadcast, gateway
            network_status = fleet.network(name)["status"]
            assert network_status["poolUsage"].endswith(f"({node.name})")
            pressure = fleet.condition(name, "IPPoolPressure")
            assert pressure["status"] == "False"
            # The live pod lost nothing: Ready, same address, its lease in place.
            got = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json").stdout)
            assert got["status"]["podIP"] == pod_ip
            ready = {c["type"]: c["status"] for c in got["status"]["conditions"]}
            assert ready["Ready"] == "True"
            (store / young).unlink()
        finally:
            cluster.kubectl("delete", "pod", pod, "--wait=true", "--timeout=60s", check=False)
        fleet.delete(name)


# A chained plugin that holds the ADD for a while after the bridge leased the address:
# the window in which containerd is killed (mid-ADD). VERSION and the other verbs pass.
SLOW_PLUGIN = """#!/bin/sh
input=$(cat)
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0"]}' ;;
ADD) sleep 5
     printf '%s' "$input" | python3 -c \
       'import json, sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))' ;;
esac
"""


def node_process(cluster: LocalCluster, node: str, component: str) -> Any:
    from devtools.localcluster import procs  # noqa: PLC0415

    return next(
        p
        for p in cluster.state.processes
        if p.node == node and p.name == component and procs.is_alive(p)
    )


def kill_and_restart(cluster: LocalCluster, node: str, component: str) -> None:
    """SIGKILL the node's containerd or kubelet, then start it again as the tier does."""
    kill(cluster, node, component)
    start(cluster, node, component)


def kill(cluster: LocalCluster, node: str, component: str) -> None:
    from devtools.localcluster import procs  # noqa: PLC0415

    record = node_process(cluster, node, component)
    os.kill(record.pid, 9)
    deadline = time.monotonic() + 30
    while procs.is_alive(record):
        assert time.monotonic() < deadline, f"{component} survived SIGKILL"
        time.sleep(0.05)


def start(cluster: LocalCluster, node: str, component: str) -> None:
    from devtools.localcluster.containerd import start_containerd  # noqa: PLC0415
    from devtools.localcluster.kubelet import start_kubelet  # noqa: PLC0415

    state = cluster.state
    record = next(n for n in state.nodes if n.name == node)
    layout = cluster.layout.node(record.index, record.runtime)
    if component == "containerd":
        start_containerd(state, layout)
    else:
        start_kubelet(cluster.layout, state, layout)


def leases(store: Path) -> dict[str, str]:
    """ip -> container id of every lease in the store."""
    out = {}
    for path in store.glob("[0-9]*"):
        try:
            out[path.name] = path.read_text().split("\r\n")[0]
        except FileNotFoundError:
            continue
    return out


def pod_ip(cluster: LocalCluster, pod: str) -> str | None:
    got = json.loads(cluster.kubectl("get", "pod", pod, "-o", "json", check=False).stdout or "{}")
    ip = (got.get("status") or {}).get("podIP")
    return str(ip) if ip else None


def test_containerd_killed_mid_add_and_pods_deleted_while_kubelet_is_down(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """The two faults of issue 14 not covered above, on the real node: after each,
    the leaked leases are reported, then reclaimed, and the live pod keeps its address."""
    node = cluster.real_nodes[0]
    if not node.runtime.startswith("containerd"):
        pytest.skip(f"the real node runs {node.runtime}; this fault kills containerd")
    suffix = secrets.token_hex(3)
    name, bridge = f"crash-{suffix}", f"cwk{suffix}"
    data_dir = node.cni_state_dir / "networks"
    slow = tmp_path / f"cwslow-{suffix}"
    slow.write_text(SLOW_PLUGIN)
    slow.chmod(0o755)
    spec = real_node_spec(node, bridge, ipam={"pressureThreshold": 90, "leaseGraceSeconds": 60})
    socket_on_node = cri_endpoint(node)
    cri = ["--runtime-endpoint", socket_on_node]
    args = {node.name: [*cri, "--gc-interval-seconds", "0"]}
    roots = {node.name: node.host_root}
    mirror = node.host_root / str(data_dir).lstrip("/")
    made = [p for p in mirror.parents if not p.exists()]
    mirror.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    mirror.symlink_to(data_dir, target_is_directory=True)
    live, doomed, slow_pod = f"live-{suffix}", f"gone-{suffix}", f"slow-{suffix}"
    rows: list[str] = []
    try:
        with running_fleet(cluster, tmp_path, [node.name], roots, args) as fleet:
            store = data_dir / name

            def leaked_report(count: int) -> dict[str, Any] | None:
                return next(
                    (
                        p
                        for p in pools_of(fleet.node_state(node.name), name)
                        if p.get("leaked") == count
                    ),
                    None,
                )

            def repair(expected: set[str]) -> str:
                """Reported (agent, GC off; and the CLI's dry run), then reclaimed by the
                agent restarted with its GC on; then back to report-only."""
                for ip in expected:
                    age_lease(store / ip, LONG_AGO)

                def reported_or_freed() -> dict[str, Any] | None:
                    if not any((store / ip).exists() for ip in expected):
                        return {"freed": True}  # a late DEL of the runtime's came first
                    return leaked_report(len(expected))

                reported = fleet.wait(reported_or_freed, "the leaked leases reported")
                if reported.get("freed"):
                    return "freed by a late DEL before the report"
                assert {x["ip"] for x in reported["leakedLeases"]} == expected
                dry = subprocess.run(
                    [sys.executable, "-m", "cni_operator.cli", "gc", "--host-root",
                     str(node.host_root), *cri, "--dry-run", "--json"],
                    capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
                )  # fmt: skip
                assert dry.returncode == 0, dry.stderr
                assert {r["ip"] for r in json.loads(dry.stdout)["released"]} == expected
                fleet.stop_agent(node.name)
                fleet.agent_args[node.name] = [*cri, "--gc-interval-seconds", "2"]
                fleet.start_agent(node.name)
                fleet.wait(
                    lambda: not any((store / ip).exists() for ip in expected),
                    "the leaked leases reclaimed",
                )
                fleet.wait(lambda: leaked_report(0), "the report shows none leaked")
                fleet.stop_agent(node.name)
                fleet.agent_args[node.name] = [*cri, "--gc-interval-seconds", "0"]
                fleet.start_agent(node.name)
                return "reported, then reclaimed"

            def live_pod_intact(ip: str) -> None:
                assert pod_ip(cluster, live) == ip, "the live pod's address changed"
                got = json.loads(cluster.kubectl("get", "pod", live, "-o", "json").stdout)
                ready = {c["type"]: c["status"] for c in got["status"]["conditions"]}
                assert ready["Ready"] == "True"
                assert (store / ip).exists(), "the live pod's lease was released"

            def fate(ip: str, owner: str) -> str | None:
                """ "freed" (a DEL released it) or "leaked" (its sandbox gone from the
                runtime's listing); None while the runtime still lists it."""
                if not (store / ip).exists():
                    return "freed"
                probe = RuntimeProbe(node.host_root, socket_on_node)
                try:
                    ids = probe.list_sandboxes().ids
                finally:
                    probe.close()
                if ids is None or owner in ids:
                    return None
                print(f"\n{ip}: {owner[:12]} not among {len(ids)} sandbox(es) listed")
                return "leaked"

            fleet.apply(name, spec)
            fleet.wait(lambda: fleet.ready(name), "network Ready on the real node", timeout=60)
            body = busybox_pod(live, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            cluster.kubectl("wait", "--for=condition=Ready", f"pod/{live}", "--timeout=120s")
            live_ip = pod_ip(cluster, live)
            assert live_ip is not None

            # Fault 1: containerd killed (SIGKILL) mid-ADD. A slow plugin chained after
            # the bridge holds the ADD open once the address is leased.
            spec["plugins"].append({"type": slow.name})
            spec["binaries"].append(
                {"name": slow.name, "sha256": sha256_file(slow), "source": {"file": str(slow)}}
            )
            fleet.apply(name, spec)
            fleet.wait(lambda: fleet.ready(name), "the slow chain Ready", timeout=60)
            before = set(leases(store))
            body = busybox_pod(
                slow_pod, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1
            )
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            first = fleet.wait(
                lambda: {ip: o for ip, o in leases(store).items() if ip not in before},
                "the slow pod's ADD leased",
                timeout=120,
            )
            kill_and_restart(cluster, node.name, "containerd")
            # kubelet retries the sandbox (a new id, a new ADD); the killed ADD's lease
            # is freed by a DEL if the runtime remembered that sandbox, else leaked.
            cluster.kubectl(
                "wait", "--for=condition=Ready", f"pod/{slow_pod}", "--timeout=180s", timeout=200
            )
            slow_ip = pod_ip(cluster, slow_pod)
            fates: dict[str, str] = {}
            for ip, owner in first.items():
                if ip != slow_ip:
                    fates[ip] = fleet.wait(
                        functools.partial(fate, ip, owner), f"the fate of {ip}", timeout=180
                    )
            leaked_1 = {ip for ip, f in fates.items() if f == "leaked"}
            if leaked_1:
                fates["repair"] = repair(leaked_1)
            live_pod_intact(live_ip)
            assert slow_ip is not None and (store / slow_ip).exists()
            rows.append(f"containerd SIGKILLed mid-ADD: {fates}, pod retried with {slow_ip}")
            cluster.kubectl("delete", "pod", slow_pod, "--wait=true", "--timeout=90s")
            print(f"\n{rows[-1]}")  # (the chain stays: a change is held while pods run)

            # Fault 2: pods deleted (force, from the API) while the node's kubelet is down.
            body = busybox_pod(doomed, node.name, ["sh", "-c", "exec sleep 3600"], grace_seconds=1)
            cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
            cluster.kubectl("wait", "--for=condition=Ready", f"pod/{doomed}", "--timeout=120s")
            doomed_ip = pod_ip(cluster, doomed)
            assert doomed_ip is not None
            kill(cluster, node.name, "kubelet")
            try:
                cluster.kubectl(
                    "delete", "pod", doomed, "--force", "--grace-period=0", "--wait=false"
                )
            finally:
                start(cluster, node.name, "kubelet")

            # Back up, kubelet stops the sandbox of a pod the API no longer has (its DEL
            # frees the lease), or the runtime drops it and the lease is leaked.
            owner = leases(store).get(doomed_ip, "")
            outcome = fleet.wait(lambda: fate(doomed_ip, owner), "the deleted pod's lease")
            if outcome == "leaked":
                outcome += ": " + repair({doomed_ip})
            rows.append(f"pods deleted while kubelet was down: {doomed_ip} {outcome}")
            live_pod_intact(live_ip)
        print("\nleak faults on the real node:\n  " + "\n  ".join(rows))
    finally:
        for pod in (live, doomed, slow_pod):
            cluster.kubectl(
                "delete", "pod", pod, "--ignore-not-found", "--timeout=60s", check=False
            )
        mirror.unlink()
        for directory in made:
            directory.rmdir()
