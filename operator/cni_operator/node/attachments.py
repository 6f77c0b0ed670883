"""Live attachments per network, read from what the runtime and host-local leave.

Two sources, united by (container id, interface): host-local's lease files
`<var/lib/cni>/networks/<network>/<ip>` (read by `node_plugin.ipam.store`, the
plugins' own reader of that layout, so it is known in one place), and libcni's
result cache `<var/lib/cni>/results/<network>-<id>-<ifname>` holding a
`cniCacheV1` JSON. Either one alone proves a sandbox is attached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_operator.node.paths import HostPaths
from node_plugin.ipam.store import read_data_dir


@dataclass
class AttachmentScan:
    by_network: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    empty_cache_files: list[str] = field(default_factory=list)

    def count(self, network: str) -> int:
        return len(self.by_network.get(network, ()))

    def add(self, network: str, container: str, ifname: str) -> None:
        self.by_network.setdefault(network, set()).add((container, ifname))


def _read_leases(data_dir: Path, scan: AttachmentScan) -> None:
    """Through the plugins' own reader, so the layout is known in one place. A lease
    file that cannot be read is skipped, as the runtime's own listing would."""
    for network, found in read_data_dir(data_dir).items():
        for lease in found.leases.values():
            if lease.container_id:
                scan.add(network, lease.container_id, lease.ifname or "")


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


def attachments_report(scan: AttachmentScan) -> list[dict[str, Any]]:
    """`status.attachments` of a CNINodeState: per network, the count and up to 20
    container ids (the report stays small on a node with many pods)."""
    return [
        {
            "network": network,
            "count": len(items),
            "containers": sorted(c for c, _ in items)[:20],
        }
        for network, items in sorted(scan.by_network.items())
    ]
