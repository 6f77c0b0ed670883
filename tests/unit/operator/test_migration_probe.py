"""The Verify probe's pure decisions: peers, the pod, the verdict; and the script run
by a real shell (with a stub `ip`/`ping` on PATH, so the parsing meets real output)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cni_operator.migration.probe import (
    FAILED,
    PASSED,
    PEER_LABEL,
    PENDING,
    PROBE_LABEL,
    Peer,
    choose_peers,
    judge,
    peers_of,
    probe_pod,
    probe_pod_name,
    probe_script,
)


def pod(
    name: str,
    node: str,
    ip: str,
    *,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    host: bool = False,
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels or {}},
        "spec": {"nodeName": node, "hostNetwork": host},
        "status": {"phase": phase, "podIP": ip},
    }


def test_peers_prefer_labelled_running_pod_network_pods_on_the_right_nodes() -> None:
    pods = [
        pod("a", "done-1", "10.0.1.5"),
        pod("b", "done-1", "10.0.1.6", labels={PEER_LABEL: "x"}),
        pod("host", "todo-1", "192.168.0.2", host=True),
        pod("gone", "todo-1", "10.0.2.9", phase="Succeeded"),
        pod("probe", "todo-1", "10.0.2.8", labels={PROBE_LABEL: "n"}),
        pod("c", "todo-1", "10.0.2.7"),
        pod("self", "me", "10.0.3.2"),
    ]
    choice = choose_peers(
        ["MigratedNode", "UnmigratedNode", "DefaultRoute"], "me", ["done-1"], ["todo-1", "me"], pods
    )
    assert [(p.kind, p.address) for p in choice.peers] == [
        ("MigratedNode", "10.0.1.6"),
        ("UnmigratedNode", "10.0.2.7"),
        ("DefaultRoute", ""),
    ]
    assert choice.skipped == ()
    first = choose_peers(["MigratedNode", "UnmigratedNode"], "me", [], ["todo-1"], pods)
    assert [p.kind for p in first.peers] == ["UnmigratedNode"]
    assert first.skipped == ("MigratedNode: no Running pod on such a node to probe",)


def test_the_pod_is_bound_tolerant_bounded_and_carries_its_peers() -> None:
    peers = (Peer("UnmigratedNode", "10.0.2.7", "pod ns/c"), Peer("DefaultRoute", "", "gw"))
    name = probe_pod_name("node-1", 2)
    assert name != probe_pod_name("node-1", 3) and len(name) < 64
    body = probe_pod(name, "default", "node-1", image="bb:1", peers=peers, deadline_seconds=60)
    spec = body["spec"]
    assert spec["nodeName"] == "node-1" and spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 60
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert peers_of(body) == peers
    assert peers_of({"metadata": {}}) is None
    with pytest.raises(ValueError):
        probe_script([Peer("UnmigratedNode", "1.2.3.4; rm -rf /", "evil")])


def run_script(
    tmp_path: Path, peers: list[Peer], answering: set[str], gateway: str
) -> tuple[int, str]:
    """The script under /bin/sh with `ip` and `ping` stubs: a real shell parses it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ip").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -o ]; then echo "2: eth0    inet 10.0.3.4/24 brd 10.0.3.255"; '
        f"else {'echo default via ' + gateway + ' dev eth0' if gateway else 'true'}; fi\n"
    )
    ok = " ".join(sorted(answering))
    (bin_dir / "ping").write_text(
        f'#!/bin/sh\nfor a in {ok}; do [ "$a" = "$3" ] && exit 0; done\nexit 1\n'
    )
    for stub in ("ip", "ping"):
        (bin_dir / stub).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["sh", "-c", probe_script(peers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return done.returncode, done.stdout


def finished(phase: str, ip: str = "10.0.3.4") -> dict[str, Any]:
    return {"status": {"phase": phase, "podIP": ip}}


def test_verdicts_name_the_failing_peer(tmp_path: Path) -> None:
    peers = [
        Peer("MigratedNode", "10.0.1.6", "pod ns/b on node done-1 (10.0.1.6)"),
        Peer("UnmigratedNode", "10.0.2.7", "pod ns/c on node todo-1 (10.0.2.7)"),
        Peer("DefaultRoute", "", "the pod's default route gateway"),
    ]
    cidrs = ["10.0.3.0/24"]
    rc, log = run_script(tmp_path, peers, {"10.0.1.6", "10.0.2.7", "10.0.3.1"}, "10.0.3.1")
    assert rc == 0
    verdict = judge(finished("Succeeded"), log, peers, cidrs)
    assert verdict.state == PASSED, verdict

    rc, log = run_script(tmp_path, peers, {"10.0.1.6", "10.0.3.1"}, "10.0.3.1")
    assert rc == 1
    verdict = judge(finished("Failed"), log, peers, cidrs)
    assert verdict.state == FAILED
    assert "UnmigratedNode (pod ns/c on node todo-1 (10.0.2.7)): no answer" in verdict.cause
    assert "MigratedNode" not in verdict.cause

    rc, log = run_script(tmp_path, peers, {"10.0.1.6", "10.0.2.7"}, "")
    verdict = judge(finished("Failed"), log, peers, cidrs)
    assert rc == 1 and "DefaultRoute" in verdict.cause and "none" in verdict.cause

    assert judge(finished("Running"), "", peers, cidrs).state == PENDING
    assert judge(None, "", peers, cidrs).state == FAILED
    outside = judge(finished("Succeeded", "10.9.9.9"), log, peers, cidrs)
    assert outside.state == FAILED and "outside the node's pod CIDRs 10.0.3.0/24" in outside.cause
    # No podIP in the status: the address the probe printed is used.
    rc, log = run_script(tmp_path, peers, {"10.0.1.6", "10.0.2.7", "10.0.3.1"}, "10.0.3.1")
    assert judge(finished("Succeeded", ""), log, peers, cidrs).state == PASSED
    # A crashed probe (no result lines) never passes.
    assert judge(finished("Failed"), "", peers, cidrs).state == FAILED
