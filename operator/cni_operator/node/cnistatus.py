"""Ask our plugins CNI STATUS exactly as a runtime would, for the readiness taint.

For the config each runtime uses (when it is ours), every plugin of ours in its
chain is exec'd from the node's bin dir with CNI_COMMAND=STATUS and the plugin's
config (name and cniVersion injected, as libcni does), under a deadline. Through
the shim this reaches the cni-server (no server: code 50); host-local answers 50
when a range is full or its dataDir is not writable.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence

from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.scan import NodeScan
from cni_operator.readiness import Readiness, StatusAnswer, judge
from cni_operator.runtime_order import RuntimeView

STATUS_VERSION = "1.1.0"  # STATUS exists from CNI 1.1.0 on


def ask_status(
    paths: HostPaths,
    conflist: bytes,
    ours: set[str],
    versions: Mapping[str, list[str] | None],
    timeout: float,
) -> list[StatusAnswer]:
    """STATUS of each plugin of ours in the chain that speaks CNI 1.1.0 (libcni asks
    no other: an older plugin has no STATUS, and counts as ready)."""
    try:
        doc = json.loads(conflist)
    except ValueError as error:
        return [StatusAnswer("config", False, f"not JSON: {error}")]
    answers = []
    for plugin in doc.get("plugins") or []:
        kind = plugin.get("type") if isinstance(plugin, dict) else None
        if kind not in ours or STATUS_VERSION not in (versions.get(kind) or []):
            continue
        stdin = json.dumps({**plugin, "name": doc.get("name"), "cniVersion": STATUS_VERSION})
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": "STATUS",
            "CNI_PATH": str(paths.bin_dir),
        }
        if "CNIWARDEN_SOCKET" in os.environ:
            env["CNIWARDEN_SOCKET"] = os.environ["CNIWARDEN_SOCKET"]
        try:
            done = subprocess.run(
                [str(paths.bin_dir / kind)],
                input=stdin.encode(),
                capture_output=True,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            answers.append(StatusAnswer(kind, False, f"no answer within {timeout:g}s"))
            continue
        except OSError as error:
            answers.append(StatusAnswer(kind, False, f"cannot exec: {error.strerror}"))
            continue
        if done.returncode == 0:
            answers.append(StatusAnswer(kind, True))
            continue
        try:
            err = json.loads(done.stdout)
            detail = f"code {err.get('code')}: {err.get('msg')}"
        except ValueError:
            detail = f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-200:]}"
        answers.append(StatusAnswer(kind, False, detail))
    return answers


def configs_in_use(scan: NodeScan, runtimes: Sequence[str]) -> list[tuple[str, bytes]]:
    """The config files of ours that the judged runtimes use (name and content)."""
    views: dict[str, RuntimeView] = {
        "containerd": scan.analysis.containerd,
        "crio": scan.analysis.crio,
    }
    out: dict[str, bytes] = {}
    for runtime in runtimes:
        view = views.get(runtime)
        if view is None or not (view.ours and view.healthy and view.file):
            continue
        data = scan.files.get(view.file)
        if data is not None:
            out[view.file] = data
    return sorted(out.items())


def node_readiness(
    paths: HostPaths,
    scan: NodeScan,
    manifest: Manifest,
    runtimes: Sequence[str],
    timeout: float = 5.0,
) -> Readiness:
    """Judge the node for the runtimes it runs (`containerd`, `crio`)."""
    views: dict[str, RuntimeView] = {
        "containerd": scan.analysis.containerd,
        "crio": scan.analysis.crio,
    }
    judged = [views[r] for r in runtimes if r in views]
    answers: list[StatusAnswer] = []
    asked: set[str] = set()
    for view in judged:
        if not (view.ours and view.healthy and view.file) or view.file in asked:
            continue
        asked.add(view.file)
        data = scan.files.get(view.file)
        if data is not None:
            ours = set(manifest.binaries)
            answers.extend(ask_status(paths, data, ours, scan.versions, timeout))
    return judge([(v.runtime, v.ours, v.healthy, v.message) for v in judged], answers)
