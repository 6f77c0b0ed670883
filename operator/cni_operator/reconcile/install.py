"""Step 3a: the binaries a network's config names go in before the config.

A runtime that reads a config whose binary is missing fails every pod, so each
binary is installed (verified, atomic, never over a file we do not own) first,
and the caller writes the config only when this step reports no problem.
Binaries the node provides itself (e.g. the distribution's plugins) are left to
the bin-dir check that follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cni_operator.api import NetworkSpec
from cni_operator.node import binaries
from cni_operator.node import manifest as manifest_io
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths


@dataclass(frozen=True)
class OwnBinaries:
    """Our own plugin binaries for this pass: their source's label and bytes."""

    label: str
    by_type: Mapping[str, bytes]


@dataclass(frozen=True)
class InstallReport:
    """Why some binary could not be installed; empty when all are in place."""

    problems: tuple[str, ...] = ()


def install_binaries(
    paths: HostPaths,
    manifest: Manifest,
    spec: NetworkSpec,
    plugin_types: Iterable[str],
    own: OwnBinaries,
) -> InstallReport:
    """Install what the rendered config names (and every declared binary).

    The manifest is saved before each write, so a crash in between never leaves
    a binary of ours that a restarted agent would take for foreign.
    """
    problems = []
    declared = {b.name: b for b in spec.binaries}
    wanted = list(dict.fromkeys([*plugin_types, *declared]))
    for kind in wanted:
        try:
            if kind in declared:
                data = binaries.fetch_declared(declared[kind])
                source = declared[kind].source.file or declared[kind].source.url or ""
            elif kind in own.by_type:
                data, source = own.by_type[kind], own.label
            else:
                continue  # provided by the node (e.g. the distribution's plugins)
            result = binaries.install(
                paths,
                manifest,
                kind,
                data,
                source,
                before_write=lambda: manifest_io.save(paths, manifest),
            )
        except (OSError, binaries.BinaryError) as error:
            problems.append(str(error))
            continue
        if not result.installed:
            problems.append(result.message)
    return InstallReport(tuple(problems))
