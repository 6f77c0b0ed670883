"""Live attachments per network, read from what the runtime and host-local leave.

Two sources, united by (container id, interface): host-local's lease files
`<var/lib/cni>/networks/<network>/<ip>` holding `containerID\\r\\nifname`, and
libcni's result cache `<var/lib/cni>/results/<network>-<id>-<ifname>` holding a
`cniCacheV1` JSON. Either one alone proves a sandbox is attached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cni_operator.node.paths import HostPaths

_NOT_LEASES = ("lock",)


@dataclass
class AttachmentScan:
    by_network: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    empty_cache_files: list[str] = field(default_factory=list)

    def count(self, network: str) -> int:
        return len(self.by_network.get(network, ()))

    def add(self, network: str, container: str, ifname: str) -> None:
        self.by_network.setdefault(network, set()).add((container, ifname))


def _read_leases(store: Path, scan: AttachmentScan) -> None:
    if not store.is_dir():
        return
    for network_dir in store.iterdir():
        if not network_dir.is_dir():
            continue
        for lease in network_dir.iterdir():
            name = lease.name
            if name in _NOT_LEASES or name.startswith(("last_reserved_ip", ".")):
                continue
            try:
                text = lease.read_text(errors="replace")
            except (OSError, IsADirectoryError):
                continue
            parts = text.replace("\r\n", "\n").split("\n")
            container = parts[0].strip()
            ifname = parts[1].strip() if len(parts) > 1 else ""
            if container:
                scan.add(network_dir.name, container, ifname)


def _read_result_cache(results: Path, scan: AttachmentScan) -> None:
    if not results.is_dir():
        return
    for entry in results.iterdir():
        if not entry.is_file():
            continue
        try:
            raw = entry.read_bytes()
        except OSError:
            continue
        if not raw.strip():
            scan.empty_cache_files.append(str(entry))
            continue
        try:
            cached = json.loads(raw)
        except json.JSONDecodeError:
            scan.empty_cache_files.append(str(entry))
            continue
        if not isinstance(cached, dict):
            continue
        network = cached.get("networkName")
        container = cached.get("containerId")
        if isinstance(network, str) and isinstance(container, str):
            scan.add(network, container, str(cached.get("ifName", "")))


def scan_attachments(paths: HostPaths, extra_stores: Iterable[Path] = ()) -> AttachmentScan:
    scan = AttachmentScan()
    for store in (paths.networks_dir, *extra_stores):
        _read_leases(store, scan)
    _read_result_cache(paths.results_dir, scan)
    return scan
