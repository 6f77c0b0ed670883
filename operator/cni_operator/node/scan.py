"""The node scan: what is in net.d and the bin dir, what each runtime uses, and
every problem with its fix. The agent reports it; the doctor prints it."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_operator.journal import CorruptLine, JournalEntry, interrupted_moves, outstanding
from cni_operator.migration.plan import old_network_report
from cni_operator.node.atomic import sha256_bytes, sha256_file
from cni_operator.node.attachments import AttachmentScan, attachments_report, scan_attachments
from cni_operator.node.binaries import VersionProber, binary_inventory
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine
from cni_operator.problems import ERROR, WARNING, Problem
from cni_operator.runtime_order import (
    DirAnalysis,
    RuntimeRules,
    Verdict,
    analyze,
    is_config_name,
    parse_config,
)


@dataclass
class NodeScan:
    paths: HostPaths
    files: dict[str, bytes | None]
    versions: dict[str, list[str] | None]
    analysis: DirAnalysis
    binaries: list[dict[str, Any]]
    attachments: AttachmentScan
    quarantined: list[JournalEntry]
    problems: list[Problem] = field(default_factory=list)
    journal_corrupt: list[CorruptLine] = field(default_factory=list)
    interrupted_moves: list[JournalEntry] = field(default_factory=list)
    unjournaled_copies: list[str] = field(default_factory=list)

    @property
    def broken(self) -> bool:
        """A runtime on this node cannot start pods."""
        return self.analysis.broken

    @property
    def has_errors(self) -> bool:
        return any(p.severity == ERROR for p in self.problems)


def read_config_dir(conf_dir: Path) -> dict[str, bytes | None]:
    """net.d as the runtimes list it (libcni's ConfFiles: a config suffix, dot-files
    included, anything but a real directory), content None where they cannot read
    it; plus `<dir>/<file>.conf` of each subdirectory, where libcni >= 1.3 finds
    the plugins of network `<dir>`."""
    files: dict[str, bytes | None] = {}
    try:
        entries = list(os.scandir(conf_dir))
    except (FileNotFoundError, NotADirectoryError):
        return files
    for entry in entries:
        path = conf_dir / entry.name
        if entry.is_dir(follow_symlinks=True):
            for inner in _subdir_entries(path):
                files[f"{entry.name}/{inner}"] = _read_regular(path / inner)
        if is_config_name(entry.name) and not entry.is_dir(follow_symlinks=False):
            files[entry.name] = _read_regular(path)
    return files


def _subdir_entries(directory: Path) -> list[str]:
    try:
        return [
            e.name
            for e in os.scandir(directory)
            if e.name.endswith(".conf") and not e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return []


def _read_regular(path: Path) -> bytes | None:
    """The bytes, or None for what a runtime fails to read: a dangling symlink, a
    directory behind a symlink, a socket. A FIFO is never opened (it would block)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return None
        return path.read_bytes()
    except OSError:
        return None


def referenced_binaries(files: Mapping[str, bytes | None]) -> set[str]:
    """Every binary a file of net.d makes some runtime exec (under any libcni's
    rules: libcni >= 1.3 also reads plugins from net.d/<name>/)."""
    wanted: set[str] = set()
    for name, data in files.items():
        wanted.update(parse_config(name, data).types)
        wanted.update(parse_config(name, data, (1, 3), files).types)
    return wanted


def scan_node(
    paths: HostPaths,
    manifest: Manifest,
    prober: VersionProber,
    *,
    node_view: bool = False,
    runtimes: Sequence[RuntimeRules] | None = None,
) -> NodeScan:
    """Scan the node. `node_view`: name paths as the node does (for the API report)
    rather than as this process sees them (for the doctor's copy-paste fixes).
    `runtimes`: the runtime(s) to judge by (None: every rule set)."""
    files = read_config_dir(paths.conf_dir)
    wanted_types = referenced_binaries(files)
    versions = prober.bin_dir_versions(paths.bin_dir, wanted_types)
    ours = manifest.config_files & set(files)
    analysis = analyze(files.items(), ours, versions, runtimes)
    quarantine = Quarantine(paths)
    journal = quarantine.read()
    scan = NodeScan(
        paths=paths,
        files=files,
        versions=versions,
        analysis=analysis,
        binaries=binary_inventory(paths, manifest, prober, wanted_types),
        attachments=scan_attachments(paths),
        quarantined=outstanding(journal.entries),
        journal_corrupt=journal.corrupt,
        interrupted_moves=interrupted_moves(journal.entries),
    )
    if journal.corrupt:
        # Only then does a copy no line names matter: it may be what a corrupt line meant.
        named = {entry.stored for entry in journal.entries}
        scan.unjournaled_copies = [c for c in quarantine.copies() if c not in named]
    scan.problems = find_problems(scan, manifest, node_view=node_view)
    return scan


class _Shown:
    """A path as it is printed: with or without the host root prefix."""

    def __init__(self, paths: HostPaths, node_view: bool) -> None:
        self.paths, self.node_view = paths, node_view

    def __call__(self, path: Path | str) -> str:
        return self.paths.host_view(path) if self.node_view else str(path)


def find_problems(scan: NodeScan, manifest: Manifest, *, node_view: bool = False) -> list[Problem]:
    paths = scan.paths
    show = _Shown(paths, node_view)
    problems: list[Problem] = []
    conf = show(paths.conf_dir)
    bin_dir = show(paths.bin_dir)
    for network, managed in sorted(manifest.networks.items()):
        path = show(paths.conf_dir / managed.file)
        data = scan.files.get(managed.file)
        if managed.file not in scan.files:
            problems.append(
                Problem(
                    "ManagedFileMissing",
                    ERROR,
                    f"{path} of network {network} is missing",
                    "Start (or restart) the cniwarden agent on this node; it rewrites the file.",
                    str(path),
                )
            )
        elif data is None or sha256_bytes(data) != managed.sha256:
            problems.append(
                Problem(
                    "ManagedFileModified",
                    WARNING,
                    f"{path} of network {network} was changed by someone else",
                    "Edit the CNINetwork instead of the file; the agent rewrites it.",
                    str(path),
                )
            )
    containerd_file = scan.analysis.containerd.file
    for verdict in scan.analysis.foreign:
        path = show(paths.conf_dir / verdict.file)
        if Verdict.INVALID in verdict.verdicts:
            problems.append(
                Problem(
                    "InvalidConfig",
                    ERROR if verdict.node_killer else WARNING,
                    f"{path}: {verdict.detail}"
                    + (" (node-killer for containerd)" if verdict.node_killer else ""),
                    f"Run `python3 -m json.tool {path}` to see the error; fix the file or move "
                    f"it out of {conf}.",
                    str(path),
                )
            )
            continue
        if Verdict.WINS_OVER_OURS in verdict.verdicts:
            problems.append(
                Problem(
                    "ForeignConfigWins",
                    ERROR,
                    f"{path} sorts before our config, so the runtime uses it: {verdict.detail}",
                    f"Move it out of {conf} (e.g. `mv {path} /root/`), or set "
                    "`shadowPolicy: Quarantine` on the CNINetwork so cniwarden moves it aside "
                    "and restores it when the network is deleted.",
                    str(path),
                )
            )
        for kind in (Verdict.MISSING_BINARY, Verdict.INCOMPATIBLE_VERSION):
            if kind not in verdict.verdicts:
                continue
            in_use = verdict.file == containerd_file
            fix = (
                f"Install the plugin binary into {bin_dir}, or remove {path}."
                if kind is Verdict.MISSING_BINARY
                else f"Set cniVersion in {path} to a version the plugin lists, or upgrade it."
            )
            problems.append(
                Problem(
                    str(kind),
                    ERROR if in_use else WARNING,
                    f"{path}: {verdict.detail}",
                    fix,
                    str(path),
                )
            )
    for view in (scan.analysis.containerd, scan.analysis.crio):
        if view.healthy:
            continue
        if view.file is None:
            problems.append(
                Problem(
                    "NoUsableConfig",
                    ERROR,
                    f"{view.runtime}: {view.message}",
                    f"Apply a CNINetwork that selects this node, or put a valid config in {conf}.",
                )
            )
        elif view.ours:
            problems.append(
                Problem(
                    "OurConfigUnusable",
                    ERROR,
                    f"{view.runtime}: {view.message}",
                    f"Check the binaries in {bin_dir} (`cniwarden doctor` lists their "
                    "versions) and the CNINetwork's conditions.",
                    show(paths.conf_dir / view.file),
                )
            )
    for name, owned in sorted(manifest.binaries.items()):
        local = paths.bin_dir / name
        path = show(local)
        if local.is_file() and sha256_file(local) != owned.sha256:
            problems.append(
                Problem(
                    "OwnedBinaryModified",
                    WARNING,
                    f"{path} differs from the binary cniwarden installed",
                    "Restart the agent to reinstall it, and find out what replaced it.",
                    str(path),
                )
            )
    if scan.journal_corrupt:
        journal = show(paths.journal)
        lines = "; ".join(str(c) for c in scan.journal_corrupt[:5])
        more = len(scan.journal_corrupt) - 5
        copies = ", ".join(map(show, scan.unjournaled_copies[:10])) or "none"
        problems.append(
            Problem(
                "QuarantineJournalCorrupt",
                ERROR,
                f"{journal}: {len(scan.journal_corrupt)} corrupt line(s) skipped ({lines}"
                + (f"; and {more} more" if more > 0 else "")
                + "); what they recorded is never restored automatically. Quarantined "
                f"copies no readable line names: {copies}",
                f"Inspect those lines of {journal}; a copy's name ends with the original "
                f"file name (it came from {conf}): put it back by hand if it belongs there, "
                "then delete the corrupt lines. Every other entry is restored as usual.",
                journal,
            )
        )
    for intent in scan.interrupted_moves:
        problems.append(
            Problem(
                "QuarantineMoveInterrupted",
                WARNING,
                f"{intent.original} was being moved to {intent.stored} when the agent stopped "
                "(or could not write its journal)",
                "The agent's next pass records the move (or retires it if the file never "
                "moved); if this stays, see the agent's other problems (e.g. a full disk).",
                intent.original,
            )
        )
    for cache in map(show, scan.attachments.empty_cache_files):
        problems.append(
            Problem(
                "EmptyResultCache",
                WARNING,
                f"{cache} is empty or not JSON; the runtime cannot tear that sandbox down",
                f"Remove it (`rm {cache}`) after checking no pod uses that container id.",
                cache,
            )
        )
    return problems


def report_dict(scan: NodeScan, manifest: Manifest) -> dict[str, Any]:
    """The scan as CNINodeState status fields."""

    def view(v: Any) -> dict[str, Any]:
        return {
            "file": v.file or "",
            "network": v.network or "",
            "ours": v.ours,
            "healthy": v.healthy,
            "networkReady": v.network_ready,
            "message": v.message,
        }

    problems = []
    for problem in scan.problems:
        item = problem.to_dict()
        if "path" in item:
            item["path"] = scan.paths.host_view(item["path"])
        problems.append(item)
    return {
        "runtimes": {
            "containerd": view(scan.analysis.containerd),
            "crio": view(scan.analysis.crio),
        },
        "managedFiles": [
            {
                "path": scan.paths.host_view(scan.paths.conf_dir / m.file),
                "network": network,
                "generation": m.generation,
                "sha256": m.sha256,
            }
            for network, m in sorted(manifest.networks.items())
        ],
        "foreignFiles": [
            {
                "path": scan.paths.host_view(scan.paths.conf_dir / v.file),
                "verdicts": [str(x) for x in v.verdicts],
                "nodeKiller": v.node_killer,
                "detail": v.detail,
                # What a CNIMigration from this network needs to know (migration.plan).
                "network": old_network_report(scan.files.get(v.file)),
            }
            for v in scan.analysis.foreign
        ],
        "shadowingFiles": [
            scan.paths.host_view(scan.paths.conf_dir / f) for f in scan.analysis.shadowing_files
        ],
        "binaries": scan.binaries,
        "attachments": attachments_report(scan.attachments),
        "quarantined": [
            {
                "original": e.original,
                "stored": e.stored,
                "sha256": e.sha256,
                "time": e.time,
                "network": e.network,
            }
            for e in scan.quarantined
        ],
        "problems": problems,
    }
