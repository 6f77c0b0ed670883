"""A real node's CRI-O: its config, launch, and images copied into its storage.

CRI-O (built by `make tools` into .tools/runtimes/crio/bin, with its `pinns`)
moves every default path here: its storage, run dirs, socket, exits and attach
dirs, version and shutdown files all live under the node's directory (pinned
namespaces at /run/<kind>ns, which the node's mount namespace binds there),
its CRI socket under the node's host root (/run/crio/crio.sock there), so two
nodes never share one. conmon is Debian's; runc is Debian's, with cgroupfs like
kubelet, behind tools/runc-capfilter: this VM's root lacks CAP_SYS_RESOURCE, so
runc cannot lower a pod's OOM score (containerd nodes use its
restrict_oom_score_adj; CRI-O has no such setting) and the agent pod
(system-node-critical, -997) never started. CRI-O has no image import
command: `skopeo copy` writes the OCI tarballs into its containers-storage (vfs:
no mount is needed to write it).
"""

from __future__ import annotations

import json
from pathlib import Path

from . import images, procs
from .containerd import containerd_binary, toml
from .layout import PAUSE_IMAGE, NodeLayout
from .state import ClusterState
from .toolpaths import REPO_ROOT, system_tool

STORAGE_DRIVER = "vfs"
BIN_DIR = REPO_ROOT / ".tools" / "runtimes" / "crio" / "bin"
RUNC_WRAPPER = REPO_ROOT / "tools" / "runc-capfilter"


def crio_config(node: NodeLayout) -> str:
    d = node.crio_dir
    config: dict[str, object] = {
        "crio": {
            "root": str(d / "storage"),
            "runroot": str(d / "runroot"),
            "storage_driver": STORAGE_DRIVER,
            "log_dir": str(node.dir / "pod-logs-crio"),
            "version_file": str(d / "run/version"),
            "version_file_persist": "",
            "clean_shutdown_file": str(d / "lib/clean.shutdown"),
            "api": {
                "listen": str(node.runtime_socket),
                "stream_address": "127.0.0.1",
                "stream_port": "0",
            },
            "runtime": {
                "cgroup_manager": "cgroupfs",
                "default_runtime": "runc",
                # containerd's default set: CRI-O's drops NET_RAW (and with it ping).
                "default_capabilities": [
                    "CHOWN",
                    "DAC_OVERRIDE",
                    "FSETID",
                    "FOWNER",
                    "MKNOD",
                    "NET_RAW",
                    "SETGID",
                    "SETUID",
                    "SETFCAP",
                    "SETPCAP",
                    "NET_BIND_SERVICE",
                    "SYS_CHROOT",
                    "KILL",
                    "AUDIT_WRITE",
                ],
                "container_exits_dir": str(d / "run/exits"),
                "container_attach_socket_dir": str(d / "run"),
                # /run/netns/<id>, the node's own (nodemounts), as on a real node: the
                # cni-server runs in the agent pod, which mounts /run/netns.
                "namespaces_dir": "/run",
                "pinns_path": str(BIN_DIR / "pinns"),
                "hooks_dir": [str(d / "hooks.d")],
                "cdi_spec_dirs": [str(d / "cdi")],
                "decryption_keys_path": str(d / "keys"),
                "runtimes": {
                    "runc": {
                        "runtime_path": str(RUNC_WRAPPER),
                        "runtime_type": "oci",
                        "runtime_root": str(d / "runc"),
                        "monitor_path": str(system_tool("conmon")),
                        "monitor_cgroup": "pod",
                    }
                },
            },
            "image": {
                "signature_policy": str(d / "policy.json"),
                "pause_image": PAUSE_IMAGE,
                "pause_command": "/pause",
            },
            "network": {
                "network_dir": str(node.cni_conf_dir),
                "plugin_dirs": [str(node.cni_bin_dir)],
            },
            "nri": {"enable_nri": False},
        }
    }
    return toml(config)


def _storage(node: NodeLayout) -> str:
    """skopeo's name for the node's containers-storage."""
    d = node.crio_dir
    return f"containers-storage:[{STORAGE_DRIVER}@{d / 'storage'}+{d / 'runroot'}]"


def start_crio(state: ClusterState, node: NodeLayout) -> None:
    d = node.crio_dir
    for sub in ("conf.d", "run", "lib", "hooks.d", "cdi", "keys"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    node.runtime_socket.parent.mkdir(parents=True, exist_ok=True)
    (d / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    containerd_binary("crio", "pinns")  # present, or a clear error
    cfg = d / "crio.conf"
    cfg.write_text(crio_config(node))
    rec = procs.start(
        "crio",
        [
            str(containerd_binary("crio", "crio")),
            "--config",
            str(cfg),
            "--config-dir",
            str(d / "conf.d"),
        ],
        Path(state.workdir) / "logs" / f"{node.name}-crio.log",
        netns=node.netns_path,
        mntns=node.mntns,
        utsns=node.utsns,
        node=node.name,
    )
    state.processes.append(rec)
    state.save()
    procs.wait_ready(
        rec, node.runtime_socket.is_socket, timeout=60, what=f"CRI-O socket {node.runtime_socket}"
    )


def import_image(node: NodeLayout, tarball: Path, reference: str) -> None:
    """An OCI or docker-archive tarball into the node's storage as `reference` (CRI-O
    may run meanwhile: containers-storage locks)."""
    transport = "docker-archive" if images.is_docker_archive(tarball) else "oci-archive"
    procs.run(
        [
            str(system_tool("skopeo")),
            "copy",
            "--quiet",
            f"{transport}:{tarball}",
            f"{_storage(node)}{reference}",
        ],
        check=True,
    )
