"""The runtime's live pod sandboxes, asked over CRI (`ListPodSandbox`) through crictl.

One small module so the CRI client can be swapped (or merged with the runtime
identification of the agent) in one place. Every call has a deadline; a runtime
that cannot be asked gives None, never an empty set: "unknown" must never read
as "every sandbox is gone", or leak repair would release live pods' addresses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cni_operator.node.paths import HostPaths

# Where each runtime listens, relative to the host root (the doctor's list too).
RUNTIME_SOCKETS = {
    "containerd": ("run/containerd/containerd.sock",),
    "crio": ("run/crio/crio.sock", "var/run/crio/crio.sock"),
}
CRICTL_ENV = "CNIWARDEN_CRICTL"
ENDPOINT_ENV = "CNIWARDEN_CRI_ENDPOINT"


@dataclass(frozen=True)
class SandboxListing:
    """What the runtime said: live sandbox ids, or why it could not be asked."""

    ids: frozenset[str] | None
    endpoint: str | None
    error: str | None = None


def find_endpoint(paths: HostPaths, configured: str | None = None) -> str | None:
    """The CRI socket: the configured one (env or flag), else the first that exists."""
    chosen = configured or os.environ.get(ENDPOINT_ENV)
    if chosen:
        return chosen if "://" in chosen else f"unix://{chosen}"
    for sockets in RUNTIME_SOCKETS.values():
        for rel in sockets:
            sock = paths.root / rel
            if sock.is_socket():
                return f"unix://{sock}"
    return None


def find_crictl(configured: str | None = None) -> str | None:
    chosen = configured or os.environ.get(CRICTL_ENV)
    if chosen:
        return chosen if Path(chosen).is_file() else None
    return shutil.which("crictl")


@dataclass
class SandboxLister:
    """Lists sandboxes of every state (a NotReady sandbox still owns its lease until
    the runtime's DEL): only sandboxes the runtime has forgotten are gone."""

    paths: HostPaths
    endpoint: str | None = None
    crictl: str | None = None
    timeout_seconds: float = 10.0

    def list(self) -> SandboxListing:
        endpoint = find_endpoint(self.paths, self.endpoint)
        if endpoint is None:
            return SandboxListing(None, None, "no CRI socket found (set --cri-endpoint)")
        crictl = find_crictl(self.crictl)
        if crictl is None:
            return SandboxListing(None, endpoint, "crictl not found (set CNIWARDEN_CRICTL)")
        seconds = max(1, int(self.timeout_seconds))
        command = [crictl, "--runtime-endpoint", endpoint, "--timeout", f"{seconds}s"]
        try:
            done = subprocess.run(
                [*command, "pods", "--quiet"],
                capture_output=True,
                text=True,
                timeout=self.timeout_seconds + 5,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return SandboxListing(None, endpoint, f"crictl pods: {error}")
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-300:]
            return SandboxListing(None, endpoint, f"crictl pods exited {done.returncode}: {detail}")
        ids = frozenset(line.strip() for line in done.stdout.splitlines() if line.strip())
        return SandboxListing(ids, endpoint)


def detect_runtimes(paths: HostPaths, choice: str, endpoint: str | None = None) -> list[str]:
    """The runtimes this node runs: the one named, else those whose socket exists
    (or whose name the configured CRI endpoint carries), else containerd."""
    if choice != "auto":
        return [choice]
    found = [
        runtime
        for runtime, sockets in RUNTIME_SOCKETS.items()
        if any((paths.root / s).exists() for s in sockets)
    ]
    if not found and endpoint:
        found = ["crio" if "crio" in endpoint else "containerd"]
    return found or ["containerd"]
