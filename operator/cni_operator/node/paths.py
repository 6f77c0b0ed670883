"""Where things live under a host root (`/` on a node, a tmp dir in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostPaths:
    root: Path

    @property
    def conf_dir(self) -> Path:
        return self.root / "etc/cni/net.d"

    @property
    def bin_dir(self) -> Path:
        return self.root / "opt/cni/bin"

    @property
    def var_lib_cni(self) -> Path:
        return self.root / "var/lib/cni"

    @property
    def networks_dir(self) -> Path:
        """host-local's lease store: `<dataDir>/<network>/<ip>`."""
        return self.var_lib_cni / "networks"

    @property
    def results_dir(self) -> Path:
        """libcni's result cache, written by the runtime on every ADD."""
        return self.var_lib_cni / "results"

    @property
    def state_dir(self) -> Path:
        """Our own state; no runtime reads it."""
        return self.var_lib_cni / "cniwarden"

    @property
    def manifest(self) -> Path:
        return self.state_dir / "manifest.json"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def journal(self) -> Path:
        return self.quarantine_dir / "journal.jsonl"

    def host_view(self, path: Path | str) -> str:
        """How the node itself names `path` (without the host root prefix)."""
        try:
            return "/" + str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def ensure(self) -> None:
        for directory in (self.conf_dir, self.bin_dir, self.state_dir, self.quarantine_dir):
            directory.mkdir(parents=True, exist_ok=True)
