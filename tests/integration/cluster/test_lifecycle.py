"""`make cluster-up` / `make cluster-down`: a second cluster next to the session's one,
and nothing left behind once it is down."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from devtools.localcluster import LocalCluster, attach, hostres, procs
from devtools.localcluster.cluster import default_root
from devtools.localcluster.pods import busybox_pod
from devtools.localcluster.toolpaths import REPO_ROOT

pytestmark = [pytest.mark.cluster("real-node"), pytest.mark.slow]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _footprint(second: LocalCluster) -> dict[str, list[str]]:
    """Everything of `second` a leak could leave on the host."""
    state = second.state
    socks = [n.containerd_socket for n in state.nodes]
    return {
        "processes": [str(p.pid) for p in state.processes if procs.is_alive(p)],
        "shims": [
            str(pid)
            for pid in procs.processes_matching(
                lambda _pid, cmd, _cg: "containerd-shim" in cmd and any(s in cmd for s in socks)
            )
        ],
        "mounts": hostres.mounts_under(second.workdir),
        "netns": [n.netns for n in state.nodes if hostres.netns_exists(n.netns)],
        "links": [
            name
            for name in [state.bridge or "", *(n.veth_host for n in state.nodes)]
            if name and hostres.link_exists(name)
        ],
        "cgroups": [str(d) for n in state.nodes for d in hostres.cgroup_dirs(n.cgroup_root)],
        "mount namespaces": [n.mntns for n in state.nodes if Path(n.mntns).exists()],
        "UTS namespaces": [
            str(Path(n.mntns).with_name("uts"))
            for n in state.nodes
            if Path(n.mntns).with_name("uts").exists()
        ],
        "egress proxy socket": [str(s) for s in [second.workdir / "egress.sock"] if s.exists()],
        "node processes": [
            str(pid)
            for n in state.nodes
            for pid in procs.pids_in_namespace("mnt", Path(n.mntns))
            + procs.pids_in_namespace("uts", Path(n.mntns).with_name("uts"))
            + procs.pids_in_namespace("net", hostres.NETNS_DIR / n.netns)
        ],
    }


def test_second_cluster_side_by_side_then_down_leaves_nothing(cluster: LocalCluster) -> None:
    name = f"lc{secrets.token_hex(3)}"
    up = _make(
        "cluster-up",
        f"CLUSTER={name}",
        "TIER=real-node",
        "REAL_NODES=2",
        "FAKE_NODES=1",
        "CNI=bridge",
    )
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        last = up.stdout.strip().splitlines()[-1]
        assert last.startswith("KUBECONFIG="), up.stdout
        kubeconfig = Path(last.removeprefix("KUBECONFIG="))
        second = attach(name)
        assert second.kubeconfig == kubeconfig
        assert second.state.slot != cluster.state.slot
        assert second.server != cluster.server

        # Both clusters answer, each with its own nodes.
        mine = set(cluster.kubectl("get", "nodes", "-o", "name").stdout.split())
        theirs = set(second.kubectl("get", "nodes", "-o", "name").stdout.split())
        assert mine and theirs and not mine & theirs

        # Running pods give the teardown containers, shims, mounts and pod netns;
        # one per node, reaching each other over the routed node-to-node datapath.
        workers = [n.name for n in second.real_nodes]
        assert len(workers) == 2
        for i, node in enumerate(workers):
            pod = busybox_pod(f"sleeper{i}", node, ["sleep", "3600"])
            second.kubectl("apply", "-f", "-", input=json.dumps(pod))
        second.kubectl(
            "wait", "--for=condition=Ready", "pod/sleeper0", "pod/sleeper1", "--timeout=90s"
        )
        far_ip = second.kubectl(
            "get", "pod", "sleeper1", "-o", "jsonpath={.status.podIP}"
        ).stdout.strip()
        ping = second.kubectl("exec", "sleeper0", "--", "ping", "-c", "1", "-W", "5", far_ip)
        assert "1 packets received" in ping.stdout, ping.stdout
        before = _footprint(second)
        assert before["processes"] and before["shims"] and before["mounts"]
        assert before["netns"] and before["links"] and before["cgroups"]
        assert before["mount namespaces"] and before["node processes"]
        assert before["UTS namespaces"] and before["egress proxy socket"]
    finally:
        down = _make("cluster-down", f"CLUSTER={name}")
    assert down.returncode == 0, down.stderr[-3000:]

    # Reaped zombies of our own children may linger for a moment.
    deadline = time.monotonic() + 10
    while (after := _footprint(second))["processes"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after == {k: [] for k in after}, f"left behind: {after}"
    assert not second.workdir.exists()
    slots = default_root() / ".slots"
    assert all(
        p.read_text().strip() != str(second.workdir) for p in slots.iterdir() if p.name.isdigit()
    )
    # The session's cluster is untouched.
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_cluster_down_of_an_unknown_cluster_is_a_no_op() -> None:
    down = _make("cluster-down", f"CLUSTER=absent{secrets.token_hex(3)}")
    assert down.returncode == 0
    assert "no cluster" in down.stderr
