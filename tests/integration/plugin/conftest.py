"""Fixtures that run CNI plugins the way a runtime does: exec by name from a CNI_PATH dir.

* `cni_bin_dir` is a directory holding our two plugin executables plus the
  reference plugins (symlinks into /usr/lib/cni). It is parametrized over
  `PLUGIN_PATHS`: to run every integration and differential test against another
  implementation (e.g. static shims talking to a resident server), add a builder
  to `PLUGIN_PATHS`; no test touches node_plugin internals to do ADD/DEL.
* `cni_host` is a fresh network namespace that plays the node's root namespace:
  plugins are exec'd inside it (nsenter --net), so bridges, host veths, iptables
  and nftables rules and sysctls never touch the machine's real root namespace.
* `sandbox()` makes container namespaces; everything is deleted after the test.
* `run_cni(plugin_type, command, config, ...)` execs `<cni_bin_dir>/<plugin_type>`
  and returns `CniRun(exit_code, output, stderr)` with stdout parsed as JSON; after
  our bridge's DEL it waits until the server's reaper unregistered the veth pair
  (tests/integration/fastpath/test_tombstones.py looks at the state before that).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.integration.fastpath.pluginpath import build_shim_path
from tests.integration.fastpath.shimbuild import ROOT
from tests.integration.plugin.kernel import (
    Netns,
    create_netns,
    delete_netns,
    netns_factory,
    wait_reaped,
    wait_until,
)
from tests.integration.plugin.paused_plugin import wrapper_script

REFERENCE_DIR = Path("/usr/lib/cni")
OUR_PLUGINS = ("cniwarden-bridge", "cniwarden-host-local")


def _venv_script(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.exists():
        found = shutil.which(name)
        if not found:
            pytest.fail(f"{name} is not installed (run `make venv`)")
        path = Path(found)
    return path


def build_standalone(directory: Path, request: pytest.FixtureRequest) -> None:
    """Our Python console scripts, as `pip install .` installs them."""
    for name in OUR_PLUGINS:
        (directory / name).symlink_to(_venv_script(name))


# name -> builder(directory, request) that puts `cniwarden-bridge` and
# `cniwarden-host-local` executables into `directory`.
PLUGIN_PATHS: dict[str, Callable[[Path, pytest.FixtureRequest], None]] = {
    "standalone": build_standalone,
    "shim+server": build_shim_path,  # static shims + one resident cni-server (fast path)
}


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"{REFERENCE_DIR} missing: run `make debs` (containernetworking-plugins)")


@pytest.fixture(scope="session", params=sorted(PLUGIN_PATHS))
def cni_bin_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_root()
    directory = tmp_path_factory.mktemp(f"cni-bin-{request.param}")
    for ref in REFERENCE_DIR.iterdir():
        (directory / ref.name).symlink_to(ref)
    PLUGIN_PATHS[request.param](directory, request)
    return directory


@dataclass(frozen=True)
class PausedPlugins:
    """A CNI_PATH directory whose cniwarden plugins stop after writing their leases."""

    bin_dir: Path
    marker: Path  # touched when the plugin has paused


@pytest.fixture
def paused_plugins(cni_bin_dir: Path, tmp_path: Path) -> PausedPlugins:
    """The test's own CNI_PATH: cni_bin_dir's executables, ours replaced by wrappers
    around the standalone plugins (tests/integration/plugin/paused_plugin.py)."""
    directory = tmp_path / "cni-bin-paused"
    directory.mkdir()
    marker = tmp_path / "paused"
    for entry in cni_bin_dir.iterdir():
        target = directory / entry.name
        if entry.name in OUR_PLUGINS:
            target.write_text(wrapper_script(entry.name, marker, ROOT))
            target.chmod(0o755)
        else:
            target.symlink_to(entry.resolve())
    return PausedPlugins(directory, marker)


@pytest.fixture
def cni_host() -> Iterator[Netns]:
    _require_root()
    ns = create_netns("cwh-")
    try:
        yield ns
    finally:
        delete_netns(ns)


@pytest.fixture
def make_host() -> Iterator[Callable[[], Netns]]:
    """More "node" namespaces, e.g. one per implementation in differential tests."""
    _require_root()
    with netns_factory("cwh-") as make:
        yield make


@pytest.fixture
def sandbox() -> Iterator[Callable[[], Netns]]:
    _require_root()
    with netns_factory("cws-") as make:
        yield make


@dataclass
class CniRun:
    exit_code: int
    output: Any  # stdout parsed as JSON, None when empty
    stderr: str
    stdout: bytes = b""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def code(self) -> int | None:
        """The CNI error code, when the run failed."""
        return self.output.get("code") if isinstance(self.output, dict) else None

    def expect_ok(self) -> Any:
        assert self.exit_code == 0, f"plugin failed: {self.output} {self.stderr}"
        return self.output

    def expect_error(self, code: int) -> str:
        assert self.exit_code != 0, f"expected error {code}, got success: {self.output}"
        assert self.code == code, f"expected code {code}, got {self.output} {self.stderr}"
        return str(self.output.get("msg", ""))


class RunCni(Protocol):
    def __call__(
        self,
        plugin_type: str,
        command: str,
        config: dict[str, Any] | bytes | None,
        *,
        container_id: str = ...,
        netns: Netns | str | None = ...,
        ifname: str = ...,
        cni_args: str = ...,
        env: dict[str, str] | None = ...,
        timeout: float = ...,
        host: Netns | None = ...,
    ) -> CniRun: ...


def cni_env(
    command: str,
    *,
    cni_bin_dir: Path,
    container_id: str = "",
    netns: Netns | str | None = None,
    ifname: str = "",
    cni_args: str = "",
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    out = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns.path if isinstance(netns, Netns) else (netns or ""),
        "CNI_IFNAME": ifname,
        "CNI_ARGS": cni_args,
        "CNI_PATH": str(cni_bin_dir),
    }
    out.update(env or {})
    return out


def exec_argv(cni_bin_dir: Path, host: Netns, plugin_type: str) -> list[str]:
    """How to exec a plugin by type inside the test's host namespace."""
    return ["nsenter", f"--net={host.path}", "--", str(cni_bin_dir / plugin_type)]


def skip_for_shims(cni_bin_dir: Path) -> None:
    """Killing a shim mid-ADD tests nothing of the plugin: the server's work goes on."""
    if cni_bin_dir.name.startswith("cni-bin-shim"):
        pytest.skip("killing a shim leaves the server's work running: see fastpath/test_crash.py")


def spawn_add(
    cni_bin_dir: Path,
    host: Netns,
    plugin_type: str,
    config: dict[str, Any],
    container_id: str,
    netns: Netns | str,
) -> subprocess.Popen[bytes]:
    """An ADD left running (to be killed), its config already written to its stdin."""
    proc = subprocess.Popen(
        exec_argv(cni_bin_dir, host, plugin_type),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cni_env(
            "ADD", cni_bin_dir=cni_bin_dir, container_id=container_id, netns=netns, ifname="eth0"
        ),
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    return proc


def kill_once_paused(proc: subprocess.Popen[bytes], paused: PausedPlugins) -> None:
    """Wait until a paused plugin wrote its lease and stopped, then kill it (also when
    the wait fails: no paused plugin outlives the test)."""
    try:
        wait_until(
            lambda: paused.marker.exists() or proc.poll() is not None,
            "the plugin to pause after writing its lease",
            timeout=60,
        )
        assert proc.poll() is None, "plugin exited before the pause point"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def run_cni(cni_bin_dir: Path, cni_host: Netns) -> RunCni:
    def run(
        plugin_type: str,
        command: str,
        config: dict[str, Any] | bytes | None,
        *,
        container_id: str = "",
        netns: Netns | str | None = None,
        ifname: str = "eth0",
        cni_args: str = "",
        env: dict[str, str] | None = None,
        timeout: float = 60,
        host: Netns | None = None,
    ) -> CniRun:
        stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
        proc = subprocess.run(
            exec_argv(cni_bin_dir, host or cni_host, plugin_type),
            input=stdin,
            capture_output=True,
            env=cni_env(
                command,
                cni_bin_dir=cni_bin_dir,
                container_id=container_id,
                netns=netns,
                ifname=ifname,
                cni_args=cni_args,
                env=env,
            ),
            timeout=timeout,
            check=False,
        )
        parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
        if command == "DEL" and plugin_type == "cniwarden-bridge":
            # shim+server answers DEL before the kernel has unregistered the veth pair:
            # compare final kernel states, like those the standalone plugin leaves.
            wait_reaped(host or cni_host)
        return CniRun(proc.returncode, parsed, proc.stderr.decode(), proc.stdout)

    return run
