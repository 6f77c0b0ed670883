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
from cni_operator.node.fetch import FetchLimits
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
    *,
    own: OwnBinaries,
    limits: FetchLimits,
) -> InstallReport:
    """Install what the rendered config names (and every declared binary).

    A declared binary whose verified bytes are already in place is not fetched:
    every lease write wakes the agent, and a source that is down must not turn a
    network invalid on a node that has what it needs. The manifest is saved before
    each write, so a crash in between never leaves a binary of ours that a
    restarted agent would take for foreign.
    """
    problems = []
    declared = {b.name: b for b in spec.binaries}
    wanted = list(dict.fromkeys([*plugin_types, *declared]))
    for kind in wanted:
        try:
            if kind in declared:
                binary = declared[kind]
                source = binary.source.file or binary.source.url or ""
                result = binaries.check_installed(paths, manifest, kind, binary.sha256, source)
                if result is None:
                    data = binaries.fetch_declared(binary, limits)
                    result = _install(paths, manifest, kind, data, source)
            elif kind in own.by_type:
                result = _install(paths, manifest, kind, own.by_type[kind], own.label)
            else:
                continue  # provided by the node (e.g. the distribution's plugins)
        except (OSError, binaries.BinaryError) as error:
            problems.append(str(error))
            continue
        if not result.installed:
            problems.append(result.message)
    return InstallReport(tuple(problems))


def _install(
    paths: HostPaths, manifest: Manifest, kind: str, data: bytes, source: str
) -> binaries.InstallResult:
    return binaries.install(
        paths,
        manifest,
        kind,
        data,
        source,
        before_write=lambda: manifest_io.save(paths, manifest),
    )
