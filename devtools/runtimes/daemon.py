"""One container runtime started standalone: a private root, state, socket,
net.d and CNI bin dir under one temp dir, in a private mount namespace (so the
fixed paths it and libcni write, /var/lib/cni and /run/containerd, are its own),
asked over CRI with crictl, and stopped with everything it started.

    with Runtime(RUNTIMES["containerd-2"], work, net_d, cni_bin) as rt:
        rt.network_condition()   # (NetworkReady, reason, message) from CRI Status
        rt.info()                # `crictl info` (containerd: its CNI config dump)
        rt.run_pod("p1")         # a real sandbox: its id, or the error
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.localcluster import images
from devtools.runtimes import recorder

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
CRICTL = TOOLS / "bin" / "crictl"
# CRI-O always asks runc for oom_score_adj -998 on the pod's infra container; root
# here lacks CAP_SYS_RESOURCE, so runc fails. containerd has restrict_oom_score_adj;
# CRI-O's runc goes through tools/runc-capfilter, which clamps a negative score to 0
# when the capability is missing (nothing else changes on this machine).
RUNC_WRAPPER = REPO / "tools" / "runc-capfilter"
PAUSE_IMAGE = "registry.local/cniwarden/pause:3.10"
PRIVATE_PATHS = (Path("/var/lib/cni"), Path("/run/containerd"))
START_DEADLINE = 60.0
CALL_DEADLINE = 60.0


class RuntimeFailure(Exception):  # noqa: N818 (a failure of the runtime under test)
    """The runtime did not start, answer or stop as asked; the message says which."""


@dataclass(frozen=True)
class RuntimeSpec:
    """A runtime this machine can run."""

    name: str  # containerd-1.6 | containerd-1.7 | containerd-2 | crio
    kind: str  # containerd | crio
    bin_dir: Path  # its binaries (first on PATH, so its own shim is found)
    config_version: int = 2  # containerd's config schema (2; 3 for containerd 2)

    @property
    def daemon(self) -> Path:
        return self.bin_dir / ("crio" if self.kind == "crio" else "containerd")

    def missing(self) -> str | None:
        """Why it cannot run here, or None."""
        for needed in (self.daemon, CRICTL):
            if not needed.exists():
                return f"{needed} is missing (make tools)"
        if self.kind == "crio" and shutil.which("conmon") is None:
            return "conmon is missing (scripts/install-debian-packages.sh)"
        if shutil.which("runc") is None:
            return "runc is missing"
        return None


RUNTIMES = {
    "containerd-1.6": RuntimeSpec("containerd-1.6", "containerd", Path("/usr/bin")),
    "containerd-1.7": RuntimeSpec(
        "containerd-1.7", "containerd", TOOLS / "runtimes/containerd-1.7/bin"
    ),
    "containerd-2": RuntimeSpec(
        "containerd-2", "containerd", TOOLS / "runtimes/containerd-2/bin", 3
    ),
    "crio": RuntimeSpec("crio", "crio", TOOLS / "runtimes/crio/bin"),
}


@dataclass(frozen=True)
class Settings:
    """The runtime's CNI settings a layout may ask for."""

    max_conf_num: int = 1  # containerd
    cni_default_network: str = ""  # CRI-O


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml(table: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for nested tables (keys quoted where needed)."""
    lines, subtables = [], []
    for key, value in table.items():
        quoted = key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
        if isinstance(value, dict):
            subtables.append((f"{prefix}.{quoted}" if prefix else quoted, value))
        else:
            lines.append(f"{quoted} = {_toml(value)}")
    out = (f"[{prefix}]\n" if prefix and lines else "") + "".join(f"{line}\n" for line in lines)
    for name, sub in subtables:
        out += "\n" + toml(sub, name)
    return out


def containerd_config(
    spec: RuntimeSpec, work: Path, settings: Settings, *, net_d: Path, cni_bin: Path
) -> str:
    runc = {
        "runtime_type": "io.containerd.runc.v2",
        "options": {
            "SystemdCgroup": False,
            "BinaryName": shutil.which("runc") or "runc",
            "Root": str(work / "state/runc"),
        },
    }
    # containerd 2 reads `bin_dirs` (a list); `bin_dir` is ignored there.
    bins: dict[str, Any] = (
        {"bin_dirs": [str(cni_bin)]} if spec.config_version == 3 else {"bin_dir": str(cni_bin)}
    )
    cni = {
        **bins,
        "conf_dir": str(net_d),
        "max_conf_num": settings.max_conf_num,
    }
    common = {
        "disable_apparmor": True,
        # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj.
        "restrict_oom_score_adj": True,
        "netns_mounts_under_state_dir": True,
        "cni": cni,
    }
    plugins: dict[str, Any]
    if spec.config_version == 3:
        plugins = {
            "io.containerd.cri.v1.runtime": {
                **common,
                "containerd": {"default_runtime_name": "runc", "runtimes": {"runc": runc}},
            },
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": PAUSE_IMAGE},
                "registry": {"config_path": ""},
            },
            "io.containerd.grpc.v1.cri": {
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
            },
        }
    else:
        plugins = {
            "io.containerd.grpc.v1.cri": {
                **common,
                "sandbox_image": PAUSE_IMAGE,
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "containerd": {
                    "snapshotter": "overlayfs",
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": runc},
                },
                "registry": {"config_path": ""},
            }
        }
    config = {
        "version": spec.config_version,
        "root": str(work / "root"),
        "state": str(work / "state"),
        "disabled_plugins": [
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
        ],
        "grpc": {"address": str(work / "runtime.sock")},
        "ttrpc": {"address": str(work / "runtime.sock.ttrpc")},
        "plugins": {
            "io.containerd.internal.v1.opt": {"path": str(work / "opt")},
            **plugins,
        },
    }
    return toml(config)


def crio_config(
    spec: RuntimeSpec, work: Path, settings: Settings, *, net_d: Path, cni_bin: Path, storage: Path
) -> str:
    network: dict[str, Any] = {
        "network_dir": str(net_d),
        "plugin_dirs": [str(cni_bin)],
    }
    if settings.cni_default_network:
        network["cni_default_network"] = settings.cni_default_network
    config = {
        "crio": {
            "root": str(storage),
            "runroot": str(work / "runroot"),
            "storage_driver": "vfs",
            "log_dir": str(work / "pod-logs"),
            "version_file": str(work / "run/version"),
            "version_file_persist": "",
            "clean_shutdown_file": str(work / "lib/clean.shutdown"),
            "api": {
                "listen": str(work / "runtime.sock"),
                "stream_address": "127.0.0.1",
                "stream_port": "0",
            },
            "runtime": {
                "cgroup_manager": "cgroupfs",
                "default_runtime": "runc",
                "container_exits_dir": str(work / "run/exits"),
                "container_attach_socket_dir": str(work / "run"),
                "namespaces_dir": str(work / "ns"),
                "pinns_path": str(spec.bin_dir / "pinns"),
                "hooks_dir": [str(work / "hooks.d")],
                "cdi_spec_dirs": [str(work / "cdi")],
                "decryption_keys_path": str(work / "keys"),
                "drop_infra_ctr": True,
                "runtimes": {
                    "runc": {
                        "runtime_path": str(RUNC_WRAPPER),
                        "runtime_type": "oci",
                        "runtime_root": str(work / "runc"),
                        "monitor_path": shutil.which("conmon") or "conmon",
                        "monitor_cgroup": "pod",
                    }
                },
            },
            "image": {
                "signature_policy": str(work / "policy.json"),
                "pause_image": PAUSE_IMAGE,
            },
            "network": network,
            "nri": {"enable_nri": False},
        }
    }
    return toml(config)


@dataclass
class PodResult:
    """One RunPodSandbox: the sandbox id, or the runtime's error."""

    sandbox: str | None
    error: str = ""
    networks: tuple[str, ...] = ()  # networks the pod's ADDs were for, eth0 first
    seconds: float = 0.0


def wait_for(what: str, check: Callable[[], bool], deadline: float, step: float = 0.05) -> None:
    """Poll `check` until it holds; RuntimeFailure naming `what` at the deadline."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeFailure(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(step)


@dataclass
class Runtime:
    """A started runtime; a context manager that always stops and cleans up."""

    spec: RuntimeSpec
    work: Path
    settings: Settings = field(default_factory=Settings)
    net_d_dir: Path | None = None  # default: <work>/net.d
    cni_bin_dir: Path | None = None  # default: <work>/cni-bin
    # CRI-O's image store (containers-storage root); sessions that run one after
    # another may share it, so the pause image is copied in once.
    crio_storage: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    mount_ns: str = ""
    created_dirs: list[Path] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    _ns_fd: int | None = None

    @property
    def socket(self) -> Path:
        return self.work / "runtime.sock"

    @property
    def net_d(self) -> Path:
        return self.net_d_dir or self.work / "net.d"

    @property
    def storage(self) -> Path:
        return self.crio_storage or self.work / "storage"

    @property
    def cni_bin(self) -> Path:
        return self.cni_bin_dir or self.work / "cni-bin"

    @property
    def log(self) -> Path:
        return self.work / "runtime.log"

    def __enter__(self) -> Runtime:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        missing = self.spec.missing()
        if missing:
            raise RuntimeFailure(f"{self.spec.name}: {missing}")
        for path in (self.net_d, self.cni_bin):
            path.mkdir(parents=True, exist_ok=True)
        for sub in ("private/var-lib-cni", "private/run-containerd"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        for path in PRIVATE_PATHS:
            if not path.exists():
                path.mkdir(parents=True)
                self.created_dirs.append(path)
        config = self.work / "config.toml"
        if self.spec.kind == "crio":
            self._store_pause_for_crio()
            config.write_text(
                crio_config(
                    self.spec,
                    self.work,
                    self.settings,
                    net_d=self.net_d,
                    cni_bin=self.cni_bin,
                    storage=self.storage,
                )
            )
            (self.work / "policy.json").write_text(
                '{"default":[{"type":"insecureAcceptAnything"}]}'
            )
            (self.work / "conf.d").mkdir(exist_ok=True)
            argv = [
                str(self.spec.daemon),
                "--config",
                str(config),
                "--config-dir",
                str(self.work / "conf.d"),
                "--log-level",
                "info",
            ]
        else:
            config.write_text(
                containerd_config(
                    self.spec, self.work, self.settings, net_d=self.net_d, cni_bin=self.cni_bin
                )
            )
            argv = [str(self.spec.daemon), "--config", str(config)]
        binds = " && ".join(
            f"mount --bind {self.work / 'private' / name} {path}"
            for name, path in zip(("var-lib-cni", "run-containerd"), PRIVATE_PATHS, strict=True)
        )
        script = f'{binds} && exec "$@"'
        env = {**os.environ, "PATH": f"{self.spec.bin_dir}:{os.environ.get('PATH', '')}"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeFailure(
                    f"{self.spec.name} exited ({self.proc.returncode}) before serving; "
                    f"log tail:\n{self.log_tail()}"
                )
            return self.socket.exists() and self.crictl("version", check=False).returncode == 0

        wait_for(f"{self.spec.name} to serve CRI on {self.socket}", serving, START_DEADLINE, 0.1)
        self.mount_ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt")
        # Holding the namespace open pins it: its inode number cannot be reused by
        # another session's namespace while stop() kills by that number.
        self._ns_fd = os.open(f"/proc/{self.proc.pid}/ns/mnt", os.O_RDONLY)
        if self.spec.kind == "containerd":
            self._import_pause()

    def _pause_tarball(self) -> Path:
        tarball = self.work.parent / "pause.tar"
        if not tarball.exists():  # built once per base dir; sessions may race here
            partial = tarball.with_name(f"pause.{uuid.uuid4().hex}.partial")
            images.build_pause(partial)
            partial.replace(tarball)
        return tarball

    def _store_pause_for_crio(self) -> None:
        """CRI-O has no import command: skopeo copies the OCI tarball into its
        containers-storage (same driver, root and runroot) before it starts."""
        policy = self.work / "policy.json"
        policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        if (self.storage / "vfs-images").is_dir() and any((self.storage / "vfs-images").iterdir()):
            return  # a shared store that already holds it
        store = f"[vfs@{self.storage}+{self.work / 'runroot'}]"
        self._run(
            [
                *("skopeo", "--policy", str(policy), "copy", "--quiet"),
                f"oci-archive:{self._pause_tarball()}",
                f"containers-storage:{store}{PAUSE_IMAGE}",
            ],
            what="copying the pause image into CRI-O's storage",
        )

    def _import_pause(self) -> None:
        tarball = self._pause_tarball()
        ctr = self.spec.bin_dir / "ctr"
        self._run(
            [
                *(str(ctr), "--address", str(self.socket), "--namespace", "k8s.io"),
                *("images", "import", "--snapshotter", "overlayfs", str(tarball)),
            ],
            what="importing the pause image",
        )

    def _run(
        self, argv: list[str], what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=CALL_DEADLINE, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeFailure(f"{what}: no answer within {CALL_DEADLINE:.0f}s") from error
        if check and done.returncode != 0:
            raise RuntimeFailure(f"{what} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def crictl(
        self, *args: str, check: bool = True, timeout: int = 20
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(CRICTL), "--runtime-endpoint", f"unix://{self.socket}"]
        argv += ["--timeout", f"{timeout}s"]
        return self._run([*argv, *args], what=f"crictl {' '.join(args)}", check=check)

    def info(self, verbose: bool = True) -> dict[str, Any]:
        """CRI Status; verbose adds the runtime's info map (containerd: its CNI config)."""
        args = ("info", "-o", "json") + (() if verbose else ("-q",))
        return dict(json.loads(self.crictl(*args).stdout))

    def version(self) -> tuple[str, str]:
        """(RuntimeName, RuntimeVersion) from CRI Version."""
        fields = dict(
            line.split(":", 1) for line in self.crictl("version").stdout.splitlines() if ":" in line
        )
        return fields.get("RuntimeName", "").strip(), fields.get("RuntimeVersion", "").strip()

    def network_condition(self, info: dict[str, Any] | None = None) -> tuple[bool, str, str]:
        """NetworkReady from CRI Status: (status, reason, message)."""
        for condition in (info or self.info(verbose=False))["status"]["conditions"]:
            if condition["type"] == "NetworkReady":
                return (
                    bool(condition["status"]),
                    condition.get("reason") or "",
                    condition.get("message") or "",
                )
        raise RuntimeFailure("CRI Status has no NetworkReady condition")

    def run_pod(self, name: str, timeout: int = 40) -> PodResult:
        """RunPodSandbox with a fresh pod (the call's deadline: `timeout` seconds);
        the networks its CNI ADDs were for."""
        uid = uuid.uuid4().hex
        pod = {
            "metadata": {"name": name, "namespace": "differential", "uid": uid, "attempt": 0},
            "log_directory": str(self.work / "pod-logs" / uid),
            "linux": {},
        }
        config = self.work / f"pod-{uid}.json"
        config.write_text(json.dumps(pod))
        started = time.monotonic()
        done = self.crictl("runp", str(config), check=False, timeout=timeout)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            return PodResult(None, (done.stderr or done.stdout).strip(), seconds=seconds)
        sandbox = done.stdout.strip().splitlines()[-1]
        self.pods.append(sandbox)
        adds = [
            c
            for c in recorder.calls(self.cni_bin.parent)
            if c["command"] == "ADD"
            and c["container"] == sandbox
            and c["ifname"] != "lo"
            and c["outcome"] == "ok"
            and c["plugin"] not in ("rec-ipam",)
        ]
        adds.sort(key=lambda c: str(c["ifname"]))
        networks: list[str] = []
        for call in adds:
            if str(call["network"]) not in networks:
                networks.append(str(call["network"]))
        return PodResult(sandbox, "", tuple(networks), seconds)

    def remove_pods(self) -> None:
        for sandbox in self.pods:
            self.crictl("stopp", sandbox, check=False)
            self.crictl("rmp", "-f", sandbox, check=False)
        self.pods.clear()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Remove its pods, stop it and every process left in its mount namespace
        (the shims), then its directories' mounts go with the namespace."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(RuntimeFailure):
                self.remove_pods()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._kill_namespace()
        self.proc = None
        for path in reversed(self.created_dirs):
            with contextlib.suppress(OSError):  # someone else's runtime uses it now
                path.rmdir()
        self.created_dirs.clear()

    def _kill_namespace(self) -> None:
        if not self.mount_ns:
            return
        try:
            self._kill_pinned_namespace()
        finally:
            if self._ns_fd is not None:
                os.close(self._ns_fd)
                self._ns_fd = None
            self.mount_ns = ""

    def _kill_pinned_namespace(self) -> None:
        for _ in range(50):
            left = [pid for pid in _pids() if _mount_ns(pid) == self.mount_ns]
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise RuntimeFailure(f"processes of {self.spec.name} survive SIGKILL: {left}")


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _mount_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""
