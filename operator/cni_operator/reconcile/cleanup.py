"""Step 5: binaries we installed that no file of ours names any more go away.

Only after the files are settled for this pass, so a binary still named by a
config on disk (even a held, older one) stays; declared binaries of the
selected networks stay too. Files we do not own are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from cni_operator.node import binaries
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.runtime_order import parse_config


def remove_unused_binaries(
    paths: HostPaths, manifest: Manifest, declared: Iterable[str]
) -> list[str]:
    """Remove owned binaries that neither our files nor `declared` name; the removed."""
    keep: set[str] = set(declared)
    for managed in manifest.networks.values():
        for file in managed.files:
            path = paths.conf_dir / file
            data = path.read_bytes() if path.is_file() else None
            keep.update(parse_config(file, data).types)
    return binaries.uninstall_unused(paths, manifest, keep)
