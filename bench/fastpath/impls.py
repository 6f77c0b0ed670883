"""The implementations the bench compares, and one plugin process timed from exec to exit."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sandboxes import cni_env

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = Path("/usr/lib/cni")
CNI_VERSION = "1.0.0"  # the newest version Debian's reference plugins (1.1.1) speak


@dataclass
class Impl:
    label: str
    bin_dir: Path
    bridge_type: str
    ipam_type: str
    ifname: str
    subnet: str
    env: dict[str, str] = field(default_factory=dict)

    def config(self, run_id: str, work: Path, masq: bool) -> dict[str, Any]:
        short = self.ifname[-3:]
        return {
            "cniVersion": CNI_VERSION,
            "name": f"cwb{short}{run_id}",
            "type": self.bridge_type,
            "bridge": f"cwb{short}{run_id}",
            "isGateway": True,
            "ipMasq": masq,
            "hairpinMode": True,
            "ipam": {
                "type": self.ipam_type,
                "subnet": self.subnet,
                "dataDir": str(work / f"ipam-{short}"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }


@dataclass
class Sample:
    ms: float
    code: int
    stdout: bytes
    stderr: bytes


def run_plugin(
    impl: Impl,
    command: str,
    config: dict[str, Any],
    container: str,
    netns: str,
    ifname: str | None = None,
) -> Sample:
    proc, started = spawn(impl, command, config, container, netns, ifname)
    return finish(proc, started)


def spawn(
    impl: Impl,
    command: str,
    config: dict[str, Any],
    container: str,
    netns: str,
    ifname: str | None = None,
) -> tuple[subprocess.Popen[bytes], float]:
    """Starts the plugin and hands it its stdin at once (a config fits in a pipe buffer)."""
    env = {
        **cni_env(command, container, netns, ifname or impl.ifname, str(impl.bin_dir)),
        **impl.env,
    }
    if "PYTHONPATH" in os.environ:  # a bench of a source tree that is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(impl.bin_dir / config["type"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):  # /bin/true does not read it
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
    proc.stdin = None  # so that communicate() only reads
    return proc, started


def finish(proc: subprocess.Popen[bytes], started: float) -> Sample:
    out, err = proc.communicate()
    return Sample((time.perf_counter() - started) * 1000, proc.returncode, out, err)


def must(sample: Sample, what: str) -> Sample:
    if sample.code != 0:
        raise SystemExit(f"{what} failed ({sample.code}): {sample.stdout!r} {sample.stderr!r}")
    return sample


def with_prev(config: dict[str, Any], result: bytes) -> dict[str, Any]:
    return {**config, "prevResult": json.loads(result)}


def standalone_dir(work: Path) -> Path | None:
    scripts = Path(sys.executable).parent
    directory = work / "standalone-bin"
    directory.mkdir()
    for name in ("cniwarden-bridge", "cniwarden-host-local"):
        if not (scripts / name).exists():
            return None
        (directory / name).symlink_to(scripts / name)
    return directory
