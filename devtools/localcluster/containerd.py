"""A real node's containerd: its config (CRI, runc, CNI dirs), launch and `ctr`.

Separate from kubelet because it has its own config language (TOML, written by
a small writer here), its own readiness (the socket serves `ctr plugins ls`)
and its own leftovers (the runc shims' sockets under the host's /run).

Three containerds: Debian's 1.6 (/usr/bin), and 1.7 and 2.x from
.tools/runtimes/<name>/bin (`make tools`). 1.7 and 2 look for their shim on PATH
before their own directory, so they run with that directory first on PATH (else
Debian's 1.6 shim would serve them). 2.x reads config version 3, where the CRI
settings moved to `io.containerd.cri.v1.runtime` / `.images`, and runs NRI by
default on a fixed host socket: off here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import procs
from .layout import PAUSE_IMAGE, NodeLayout
from .state import ClusterState
from .toolpaths import REPO_ROOT, MissingToolError, system_tool

NAMESPACE = "k8s.io"
# containerd's Prometheus endpoint on the node's IP (its own netns): the CRI plugin's
# histograms (sandbox_create_network, ...) time the CNI set-up as the runtime sees it.
METRICS_PORT = 1338


def metrics_url(node_ip: str) -> str:
    """Where the containerd of the node at `node_ip` serves its metrics (reachable from
    the machine: the node's IP is on the cluster's bridge)."""
    return f"http://{node_ip}:{METRICS_PORT}/v1/metrics"


def runtime_bin_dir(runtime: str) -> Path | None:
    """Where a built runtime's binaries are (None: Debian's, on PATH)."""
    if runtime == "containerd-1.6":
        return None
    return REPO_ROOT / ".tools" / "runtimes" / runtime / "bin"


def containerd_binary(runtime: str, name: str = "containerd") -> Path:
    bin_dir = runtime_bin_dir(runtime)
    if bin_dir is None:
        return system_tool(name)
    path = bin_dir / name
    if not path.exists():
        raise MissingToolError(f"{path} is missing: run `make tools` (builds {runtime})")
    return path


def runtime_env(runtime: str) -> dict[str, str]:
    """PATH with the runtime's own directory first (its shim must win over Debian's)."""
    bin_dir = runtime_bin_dir(runtime)
    if bin_dir is None:
        return {}
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def containerd_config(node: NodeLayout) -> str:
    if node.runtime == "containerd-2":
        return toml(_v3_config(node))
    return toml(_v2_config(node))


def _runc(state: Path) -> dict[str, object]:
    return {
        "runtime_type": "io.containerd.runc.v2",
        "options": {
            "SystemdCgroup": False,
            "BinaryName": str(system_tool("runc")),
            "Root": str(state / "runc"),
        },
    }


def _v3_config(node: NodeLayout) -> dict[str, object]:
    """containerd 2.x: the same node as `_v2_config`, in config version 3."""
    state = node.containerd_dir / "state"
    return {
        "version": 3,
        "root": str(node.containerd_dir / "root"),
        "state": str(state),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.blockfile",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.erofs",
            "io.containerd.snapshotter.v1.zfs",
        ],
        "grpc": {"address": str(node.containerd_socket)},
        "ttrpc": {"address": str(node.containerd_dir / "containerd.sock.ttrpc")},
        "metrics": {"address": f"{node.ip}:{METRICS_PORT}"},
        "plugins": {
            "io.containerd.internal.v1.opt": {"path": str(node.containerd_dir / "opt")},
            "io.containerd.nri.v1.nri": {"disable": True},
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": PAUSE_IMAGE},
                "registry": {"config_path": ""},
            },
            "io.containerd.cri.v1.runtime": {
                "disable_apparmor": True,
                "restrict_oom_score_adj": True,
                # As in the v2 config: pod netns at /run/netns/cni-* (the node's own
                # directory), which the cni-server's pod mounts.
                "netns_mounts_under_state_dir": False,
                "containerd": {"default_runtime_name": "runc", "runtimes": {"runc": _runc(state)}},
                "cni": {
                    "bin_dirs": [str(node.cni_bin_dir)],
                    "conf_dir": str(node.cni_conf_dir),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.grpc.v1.cri": {
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
            },
        },
    }


def _v2_config(node: NodeLayout) -> dict[str, object]:
    state = node.containerd_dir / "state"
    config: dict[str, object] = {
        "version": 2,
        "root": str(node.containerd_dir / "root"),
        "state": str(state),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
        ],
        "grpc": {"address": str(node.containerd_socket)},
        "metrics": {"address": f"{node.ip}:{METRICS_PORT}"},
        "plugins": {
            "io.containerd.internal.v1.opt": {"path": str(node.containerd_dir / "opt")},
            "io.containerd.grpc.v1.cri": {
                "sandbox_image": PAUSE_IMAGE,
                "disable_apparmor": True,
                # The VM's root lacks CAP_SYS_RESOURCE, so no process may lower its
                # oom_score_adj (runc fails on the -998 CRI asks for sandboxes):
                # cap every container at containerd's own score instead.
                "restrict_oom_score_adj": True,
                # Pod netns bind mounts at /run/netns/cni-*, which in the node's mount
                # namespace is its own directory (nodemounts), as on a real node:
                # the cni-server's pod mounts /run/netns to replay queued DELs.
                "netns_mounts_under_state_dir": False,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": _runc(state)},
                },
                "cni": {
                    "bin_dir": str(node.cni_bin_dir),
                    "conf_dir": str(node.cni_conf_dir),
                    "max_conf_num": 1,
                },
                "registry": {"config_path": ""},
            },
        },
    }
    if node.runtime != "containerd-1.6":
        # 1.7 serves NRI off by default, 1.6 has none; say so where it exists.
        plugins = config["plugins"]
        assert isinstance(plugins, dict)
        plugins["io.containerd.nri.v1.nri"] = {"disable": True}
    return config


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml(table: dict[str, object], prefix: str = "") -> str:
    """Minimal TOML writer for the nested tables of containerd's config."""
    lines, subtables = [], []
    for key, value in table.items():
        quoted = key if key.replace("_", "").isalnum() else json.dumps(key)
        if isinstance(value, dict):
            subtables.append((f"{prefix}.{quoted}" if prefix else quoted, value))
        else:
            lines.append(f"{quoted} = {_toml_value(value)}")
    out = ""
    if lines:
        out += (f"[{prefix}]\n" if prefix else "") + "\n".join(lines) + "\n\n"
    for name, sub in subtables:
        out += toml(sub, name)
    return out


def ctr(node: NodeLayout, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The node's containerd's own `ctr`."""
    binary = str(containerd_binary(node.runtime, "ctr"))
    return procs.run(
        [binary, "--address", str(node.containerd_socket), "--namespace", NAMESPACE, *args],
        check=check,
    )


def start_containerd(state: ClusterState, node: NodeLayout) -> None:
    cfg = node.containerd_dir / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(containerd_config(node))
    node.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
    rec = procs.start(
        "containerd",
        [str(containerd_binary(node.runtime)), "--config", str(cfg)],
        Path(state.workdir) / "logs" / f"{node.name}-containerd.log",
        netns=node.netns_path,
        mntns=node.mntns,
        utsns=node.utsns,
        env=runtime_env(node.runtime),
        node=node.name,
    )
    state.processes.append(rec)
    state.save()

    def serving() -> bool:
        if not node.containerd_socket.exists():
            return False
        return ctr(node, "plugins", "ls", check=False).returncode == 0

    procs.wait_ready(rec, serving, timeout=60, what=f"containerd socket {node.containerd_socket}")


def shim_sockets(containerd_state: Path) -> list[Path]:
    """Sockets the runc shims made under the host's /run/containerd/s (a fixed path)."""
    tasks = containerd_state / "io.containerd.runtime.v2.task"
    found = []
    if tasks.is_dir():
        for address in tasks.glob("*/*/address"):
            text = address.read_text().strip()
            if text.startswith("unix://"):
                found.append(Path(text.removeprefix("unix://")))
    return found
