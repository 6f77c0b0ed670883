"""The rest of the doctor's decision tree, after binaries and configs (node/scan.py):

1. plugin health: the cni-server answers VERSION on its socket, our plugins answer
   STATUS (node/cnistatus.py); with --kubeconfig, the agent's heartbeat age and its
   pod's restarts;
2. IP exhaustion: pool usage and leaked leases (node/pools.py), `--gc` reclaims;
3. "existing pods lost connectivity": the kernel now against the one of the last
   good apply, and the config on disk against the last good one (node/history.py),
   `--restore-last-good` writes it back without the API server;
4. the CNI errors only the kubelet sees: FailedCreatePodSandBox events for this node
   (--kubeconfig) and CNI lines of the kubelet journal (when journalctl exists).

Every finding is a Problem with its fix, so the text and --json outputs carry them
the same way as the scan's.
"""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from cni_operator.healthcheck import probe_cni_server
from cni_operator.kube_time import parse_rfc3339
from cni_operator.node.atomic import atomic_write, sha256_bytes
from cni_operator.node.cnistatus import node_readiness
from cni_operator.node.history import last_good
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.pools import reclaim_leaked, scan_pools
from cni_operator.node.sandboxes import SandboxSource
from cni_operator.node.scan import NodeScan
from cni_operator.problems import ERROR, WARNING, Problem

SERVER_SOCKET = "run/cniwarden/cni.sock"
HEARTBEAT_STALE_SECONDS = 60
JOURNAL_TIMEOUT = 10


@dataclass
class TreeReport:
    problems: list[Problem] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)


def plugin_health(
    paths: HostPaths, scan: NodeScan, manifest: Manifest, runtimes: list[str], out: TreeReport
) -> None:
    health: dict[str, Any] = {}
    socket = paths.root / SERVER_SOCKET
    if socket.exists():
        try:
            health["cniServer"] = {"socket": str(socket), "version": probe_cni_server(socket)}
        except (OSError, ValueError) as error:
            health["cniServer"] = {"socket": str(socket), "error": str(error)}
            out.problems.append(
                Problem(
                    "CniServerDown",
                    ERROR,
                    f"the cni-server on {socket} does not answer: {error}",
                    "Restart the agent pod (its cni-server container): `kubectl -n <ns> delete "
                    "pod -l app.kubernetes.io/component=agent --field-selector "
                    "spec.nodeName=<node>`; until then every ADD fails with code 11.",
                    str(socket),
                )
            )
    if manifest.networks:
        verdict = node_readiness(paths, scan, manifest, runtimes)
        health["status"] = {"ready": verdict.ready, "message": verdict.message}
        if not verdict.ready:
            out.problems.append(
                Problem(
                    "CniNotReady",
                    ERROR,
                    f"CNI STATUS is not ok: {verdict.message}",
                    "Fix what the message names (the problems above say how); the node "
                    "carries cniwarden.io/agent-not-ready until then when the taint is on.",
                )
            )
    out.sections["pluginHealth"] = health


def pools(
    paths: HostPaths,
    manifest: Manifest,
    lister: SandboxSource,
    out: TreeReport,
    *,
    gc: bool,
) -> None:
    listing = lister.list_sandboxes()
    scan = scan_pools(paths, manifest, listing)
    out.problems.extend(scan.problems)
    section: dict[str, Any] = {
        "runtime": listing.endpoint,
        "runtimeError": listing.error,
        "pools": [u.to_dict() for u in scan.usage],
    }
    if gc:
        released, errors = reclaim_leaked(paths, manifest, listing)
        section["released"] = [vars(r) for r in released]
        section["gcErrors"] = errors
    out.sections["ipPools"] = section


def history(paths: HostPaths, manifest: Manifest, out: TreeReport, *, restore: bool) -> None:
    kernel_now = os.uname().release
    section: dict[str, Any] = {"kernel": kernel_now, "networks": []}
    for network, managed in sorted(manifest.networks.items()):
        good = last_good(paths, network)
        if good is None:
            continue
        item: dict[str, Any] = {
            "network": network,
            "lastGoodGeneration": good.generation,
            "lastGoodTime": good.time,
            "lastGoodSha256": good.sha256,
            "lastGoodKernel": good.kernel,
        }
        if good.kernel != kernel_now:
            out.problems.append(
                Problem(
                    "KernelChanged",
                    WARNING,
                    f"network {network} was last applied on kernel {good.kernel}; the node "
                    f"now runs {kernel_now}",
                    "If pods lost connectivity since the reboot, check the bridge and "
                    "netfilter modules (`lsmod | grep -e bridge -e br_netfilter -e nf_tables`) "
                    "and `sysctl net.ipv4.ip_forward`; roll the kernel back if needed.",
                )
            )
        path = paths.conf_dir / good.file
        try:
            on_disk: bytes | None = path.read_bytes()
        except OSError:
            on_disk = None
        if on_disk is None or sha256_bytes(on_disk) != good.sha256:
            diff = list(
                difflib.unified_diff(
                    good.content.splitlines(),
                    (on_disk or b"").decode("utf-8", errors="replace").splitlines(),
                    f"last good (generation {good.generation}, {good.time})",
                    str(path) if on_disk is not None else f"{path} (missing)",
                    lineterm="",
                )
            )
            item["diff"] = diff[:80]
            if restore:
                atomic_write(path, good.content.encode())
                item["restored"] = True
            else:
                out.problems.append(
                    Problem(
                        "ConfigChangedSinceLastGood",
                        ERROR if on_disk is None else WARNING,
                        f"{path} differs from the last config the agent applied "
                        f"(generation {good.generation}, {good.time}): "
                        f"{len(diff)} diff line(s)",
                        "Restore it: `cniwarden doctor --restore-last-good` (works without the "
                        "API server); or roll the network back: `cniwarden rollback "
                        f"{network}`.",
                        str(path),
                    )
                )
        item["managedSha256"] = managed.sha256
        section["networks"].append(item)
    out.sections["configHistory"] = section


def kubelet_journal(out: TreeReport, since: str = "-1h") -> None:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        out.sections["kubeletJournal"] = {"skipped": "journalctl not found"}
        return
    try:
        done = subprocess.run(
            [journalctl, "-u", "kubelet", "--since", since, "--no-pager", "-q", "-o", "cat",
             "-g", "(?i)cni|FailedCreatePodSandBox|network plugin"],
            capture_output=True, text=True, timeout=JOURNAL_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        out.sections["kubeletJournal"] = {"skipped": str(error)}
        return
    lines = [line for line in done.stdout.splitlines() if line.strip()][-10:]
    out.sections["kubeletJournal"] = {"lines": lines}
    if lines:
        out.problems.append(
            Problem(
                "KubeletCniErrors",
                WARNING,
                f"{len(lines)} recent CNI line(s) in the kubelet journal; last: {lines[-1][:300]}",
                "Read them with `journalctl -u kubelet --since -1h -g cni`; each names the "
                "pod and the plugin's error code.",
            )
        )


def cluster_checks(kubeconfig: str, node: str, out: TreeReport) -> None:
    """Events and the agent's heartbeat; never fatal: a node cut off from the API
    server is exactly when the doctor is run."""
    section: dict[str, Any] = {"node": node}
    try:
        from cni_operator.kube import Kube  # noqa: PLC0415 (the client only when asked)

        kube = Kube(kubeconfig)
        events = kube.list_events("reason=FailedCreatePodSandBox")
        failures: list[dict[str, Any]] = []
        for event in events:
            source = (event.get("source") or {}).get("host")
            message = str(event.get("message") or "")
            if source not in (None, node) and node not in message:
                continue
            involved = event.get("involvedObject") or {}
            failures.append(
                {
                    "pod": f"{involved.get('namespace')}/{involved.get('name')}",
                    "count": event.get("count") or 1,
                    "last": str(event.get("lastTimestamp") or event.get("eventTime") or ""),
                    "message": message[:500],
                }
            )
        section["failedCreatePodSandBox"] = failures[-20:]
        if failures:
            last = failures[-1]
            out.problems.append(
                Problem(
                    "FailedCreatePodSandBox",
                    ERROR,
                    f"{len(failures)} pod(s) on {node} failed to get a sandbox; last "
                    f"{last['pod']}: {last['message'][:300]}",
                    "The message ends with the CNI plugin's error: fix the cause the rest of "
                    "this report names; kubelet retries the pods by itself.",
                )
            )
        state = kube.get_node_state(node)
        beat = parse_rfc3339(((state or {}).get("status") or {}).get("heartbeatTime"))
        if beat is None:
            section["agentHeartbeat"] = None
            out.problems.append(
                Problem(
                    "AgentSilent",
                    ERROR,
                    f"no CNINodeState heartbeat from the agent on {node}",
                    "Check the agent pod on this node (`kubectl get pods -A -o wide "
                    f"--field-selector spec.nodeName={node}`).",
                )
            )
        else:
            age = time.time() - beat
            section["agentHeartbeatAgeSeconds"] = round(age, 1)
            if age > HEARTBEAT_STALE_SECONDS:
                out.problems.append(
                    Problem(
                        "AgentHeartbeatStale",
                        ERROR,
                        f"the agent on {node} last reported {age:.0f}s ago",
                        "Restart the agent pod on this node; see its logs for the cause.",
                    )
                )
        pods = kube.list_pods(f"spec.nodeName={node}", "app.kubernetes.io/name=cniwarden")
        restarts = {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}/{c['name']}": int(
                c.get("restartCount") or 0
            )
            for p in pods
            for c in (p.get("status") or {}).get("containerStatuses") or []
        }
        section["pluginRestarts"] = restarts
        crashing = {k: v for k, v in restarts.items() if v > 0}
        if crashing:
            out.problems.append(
                Problem(
                    "PluginRestarted",
                    WARNING,
                    "cniwarden containers restarted: "
                    + ", ".join(f"{k} ({v}x)" for k, v in sorted(crashing.items())),
                    "See why: `kubectl logs --previous` on each; a crash loop stops CNI "
                    "on this node (the shims answer 11, DELs are queued).",
                )
            )
    except Exception as error:  # the API server is away or refuses: say so, go on
        section["error"] = f"{type(error).__name__}: {error}"[:500]
    out.sections["cluster"] = section
