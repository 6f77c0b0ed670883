"""The runtime's own verdict, asked of a real runtime: Debian's containerd 1.6.20
started on a tmp host root (its CRI socket at <root>/run/containerd/containerd.sock,
where a node's is), asked over CRI by the agent's probe and by `cniwarden doctor`.

The issue's scenario at the runtime: a truncated `.00-dot.conflist` next to a good
config. containerd's libcni reads dot-files, fails, and says NetworkReady=false.
Whatever the model predicts for that file, the doctor must never call the node
healthy: either the model names the file, or the cross-check says the runtime
disagrees with it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cni_operator.node.cri import RuntimeProbe
from cni_operator.runtime_truth import RuntimeFacts

from devtools.localcluster import procs

CONTAINERD = Path("/usr/bin/containerd")
REFERENCE = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    not CONTAINERD.exists() or not (REFERENCE / "bridge").exists(),
    reason="Debian's containerd or containernetworking-plugins missing",
)
SOCKET = "/run/containerd/containerd.sock"
GOOD = {
    "cniVersion": "1.0.0",
    "name": "pods",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cwtruth0",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]]},
        }
    ],
}
TRUNCATED = b'{"cniVersion":"1.0.0","name":"dot","plugins":[{"type":"bri'
# containerd reloads net.d on fsnotify; its Status reflects a change within ms.
RELOAD_SECONDS = 10.0


@dataclass
class Node:
    root: Path
    conf_dir: Path
    log: Path


@pytest.fixture
def node() -> Iterator[Node]:
    """containerd 1.6 with every path in a short tmp dir (unix socket paths are short)."""
    work = Path(tempfile.mkdtemp(prefix="cw-truth-", dir="/tmp"))
    root = work / "host"
    conf, bins = root / "etc/cni/net.d", root / "opt/cni/bin"
    for d in (conf, bins, root / "run/containerd"):
        d.mkdir(parents=True)
    for plugin in ("bridge", "host-local", "loopback"):
        shutil.copy2(REFERENCE / plugin, bins / plugin)
    config = work / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
        f'[grpc]\n  address = "{root}{SOCKET}"\n'
        f'[ttrpc]\n  address = "{work}/ttrpc.sock"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work}/opt"\n'
        f'[plugins."io.containerd.grpc.v1.cri".cni]\n  conf_dir = "{conf}"\n'
        f'  bin_dir = "{bins}"\n'
    )
    log = work / "containerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CONTAINERD), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for((root / SOCKET.lstrip("/")).is_socket, 30, "containerd's socket", log)
        yield Node(root, conf, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        procs.run(["umount", "-R", str(work / "root")], check=False)
        shutil.rmtree(work, ignore_errors=True)


def wait_for(check: Any, timeout: float, what: str, log: Path | None = None) -> float:
    """Poll until `check()` is truthy; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    tail = log.read_text()[-2000:] if log else ""
    raise AssertionError(f"{what}: not within {timeout} s\n{tail}")


def doctor(root: Path) -> tuple[int, dict[str, Any], str]:
    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cni_operator.cli", "doctor", "--host-root", str(root), *extra],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    report = json.loads(run("--json").stdout)
    text = run()
    assert report["exitCode"] == text.returncode
    return text.returncode, report, text.stdout


def network(probe: RuntimeProbe, ready: bool) -> RuntimeFacts | None:
    facts = probe.facts()
    return facts if facts.network_ready is ready else None


def test_the_probe_names_the_runtime_and_reads_its_network_verdict(node: Node) -> None:
    probe = RuntimeProbe(node.root)
    try:
        down = probe.facts()
        assert (down.endpoint, down.name, down.api_version) == (SOCKET, "containerd", "v1")
        assert down.version.startswith("1.6.")
        assert down.network_ready is False  # empty net.d
        assert down.network_reason == "NetworkPluginNotReady"
        assert "cni plugin not initialized" in down.network_message
        (node.conf_dir / "10-pods.conflist").write_text(json.dumps(GOOD))
        wait_for(lambda: network(probe, True), RELOAD_SECONDS, "NetworkReady=true", node.log)
    finally:
        probe.close()


def test_a_runtime_that_is_not_there_is_said_plainly(tmp_path: Path) -> None:
    (tmp_path / "run/containerd").mkdir(parents=True)
    (tmp_path / "run/containerd/containerd.sock").write_text("not a socket")
    probe = RuntimeProbe(tmp_path, endpoint="unix:///run/containerd/containerd.sock")
    facts = probe.facts()
    assert facts.name == "" and facts.judged_by == ("containerd", "crio")
    assert facts.identify_error.startswith(f"no CRI socket answered under {tmp_path}")
    assert "/run/containerd/containerd.sock: no socket" in facts.identify_error


def test_truncated_dot_file_never_leaves_the_node_reported_healthy(node: Node) -> None:
    (node.conf_dir / "10-pods.conflist").write_text(json.dumps(GOOD))
    probe = RuntimeProbe(node.root)
    try:
        wait_for(lambda: network(probe, True), RELOAD_SECONDS, "NetworkReady=true", node.log)
        code, report, text = doctor(node.root)
        assert code == 0, text
        assert report["runtime"]["summary"].startswith("containerd 1.6.")
        assert report["runtime"]["judgedBy"] == ["containerd"]
        assert "Runtime: containerd 1.6." in text and "judged by containerd rules" in text

        (node.conf_dir / ".00-dot.conflist").write_bytes(TRUNCATED)
        took = wait_for(lambda: network(probe, False), RELOAD_SECONDS, "NetworkReady=false")
        print(f"containerd 1.6 NetworkReady=false {took:.3f} s after the dot-file appeared")
    finally:
        probe.close()
    code, report, text = doctor(node.root)
    assert code == 2, text  # BROKEN: the runtime cannot start pods
    assert report["runtimeVerdict"]["cri"]["networkReady"] is False
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    if report["runtimes"]["containerd"]["healthy"]:
        # The model missed it: the cross-check must say so, first.
        assert errors[0]["code"] == "RuntimeDisagrees", errors
        assert errors[0]["message"].startswith(
            "runtime reports NetworkPluginNotReady: Network plugin returns error: cni plugin "
            "not initialized (CRI Status); our model predicted healthy"
        )
        assert "RuntimeDisagrees" in text and "our model predicted healthy" in text
    else:
        # The model knows dot-files: it names the file, and agrees with the runtime.
        assert any(".00-dot.conflist" in p["message"] for p in errors), errors
        assert report["runtimeVerdict"]["agrees"] is True
