"""Plugin binaries in the bin dir: verified atomic installs, and VERSION probes.

An install writes the bytes under a temp name, checks the sha256 of what landed,
and renames it into place; it never replaces a same-named file the manifest
does not say is ours (that is reported instead). Binaries go in before the
config that names them. A declared binary already in place (same sha256) is not
fetched again, so a download outage never touches a node that has it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cni_operator.api import DeclaredBinary
from cni_operator.node.atomic import atomic_write, remove, sha256_bytes, sha256_file
from cni_operator.node.fetch import FetchError, FetchLimits, fetch_url
from cni_operator.node.manifest import Manifest, OwnedBinary
from cni_operator.node.paths import HostPaths

VERSION_TIMEOUT_S = 10


class BinaryError(RuntimeError):
    pass


@dataclass(frozen=True)
class InstallResult:
    name: str
    installed: bool
    changed: bool
    message: str


def fetch_declared(binary: DeclaredBinary, limits: FetchLimits | None = None) -> bytes:
    """Read a declared binary from its source (within `limits`) and verify its sha256."""
    limits = limits or FetchLimits()
    if binary.source.file:
        path = Path(binary.source.file)
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise BinaryError(
                f"{binary.name}: {path} is {size} bytes, more than the {limits.max_bytes} allowed"
            )
        data = path.read_bytes()
    elif binary.source.url:
        try:
            data = fetch_url(binary.source.url, limits)
        except FetchError as error:
            raise BinaryError(f"{binary.name}: {error}") from None
    else:
        raise BinaryError(f"{binary.name}: source needs `file` or `url`")
    actual = sha256_bytes(data)
    if actual != binary.sha256:
        raise BinaryError(
            f"{binary.name}: sha256 of the source is {actual}, the spec declares {binary.sha256}; "
            "not installed"
        )
    return data


def check_installed(
    paths: HostPaths, manifest: Manifest, name: str, wanted: str, source: str
) -> InstallResult | None:
    """The outcome of installing a binary with sha256 `wanted`, when it needs no write:
    it is in place (ours, or an identical file of someone else's), or a different
    file we do not own holds the name. None: it must be written. Updates `manifest`
    when our binary is in place under another source. Lets the caller skip fetching
    the bytes (a download) when they are already there."""
    target = paths.bin_dir / name
    if not (target.exists() or target.is_symlink()):
        return None
    current = sha256_file(target) if target.is_file() else ""
    owned = manifest.binaries.get(name)
    if owned is None:
        if current == wanted:
            return InstallResult(name, True, False, "present (identical, not ours)")
        return InstallResult(
            name,
            False,
            False,
            f"{target} exists and is not ours (sha256 {current[:12]}...); left untouched",
        )
    if current == wanted and os.access(target, os.X_OK):
        if owned.sha256 != wanted or owned.source != source:
            manifest.binaries[name] = OwnedBinary(wanted, source)
        return InstallResult(name, True, False, "up to date")
    return None


def install(
    paths: HostPaths,
    manifest: Manifest,
    name: str,
    data: bytes,
    source: str,
    *,
    before_write: Callable[[], None] | None = None,
) -> InstallResult:
    """Install one binary; updates `manifest` (the caller saves it).

    `before_write` runs after the manifest records the binary as ours and before
    the file is written (the caller persists the manifest there), so a crash in
    between never leaves a binary of ours that a restart takes for foreign.
    """
    target = paths.bin_dir / name
    wanted = sha256_bytes(data)
    found = check_installed(paths, manifest, name, wanted, source)
    if found is not None:
        return found
    paths.bin_dir.mkdir(parents=True, exist_ok=True)
    manifest.binaries[name] = OwnedBinary(wanted, source)
    if before_write is not None:
        before_write()
    atomic_write(target, data, mode=0o755)
    landed = sha256_file(target)
    if landed != wanted:
        raise BinaryError(f"{target}: wrote sha256 {wanted} but read back {landed}")
    manifest.binaries[name] = OwnedBinary(wanted, source)
    return InstallResult(name, True, True, "installed")


def uninstall_unused(paths: HostPaths, manifest: Manifest, keep: Iterable[str]) -> list[str]:
    """Remove binaries we own that no managed network needs any more."""
    keep_set = set(keep)
    removed = []
    for name in sorted(set(manifest.binaries) - keep_set):
        target = paths.bin_dir / name
        if target.is_file() and sha256_file(target) != manifest.binaries[name].sha256:
            # Someone replaced it since; it is no longer the file we installed.
            del manifest.binaries[name]
            continue
        remove(target)
        del manifest.binaries[name]
        removed.append(name)
    return removed


class VersionProber:
    """Asks a plugin binary which CNI versions it supports; cached by file identity."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, int, int], list[str] | None] = {}

    def versions(self, path: Path) -> list[str] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key not in self._cache:
            self._cache[key] = probe_versions(path)
        return self._cache[key]

    def bin_dir_versions(self, bin_dir: Path, wanted: Iterable[str]) -> dict[str, list[str] | None]:
        """Binary name -> VERSION answer, for the wanted names that exist."""
        found: dict[str, list[str] | None] = {}
        for name in set(wanted):
            path = bin_dir / name
            if path.is_file() and os.access(path, os.X_OK):
                found[name] = self.versions(path)
        return found


def probe_versions(path: Path) -> list[str] | None:
    """Run the CNI VERSION command; None when the binary does not answer properly."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        completed = subprocess.run(
            [str(path)],
            input=b'{"cniVersion":"0.4.0"}',
            env=env,
            capture_output=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    try:
        answer = json.loads(completed.stdout)
        versions = answer["supportedVersions"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        return None
    return list(versions)


def binary_inventory(
    paths: HostPaths, manifest: Manifest, prober: VersionProber, names: Iterable[str]
) -> list[dict[str, object]]:
    """Report entries for binaries: ours plus the ones configs name."""
    out = []
    for name in sorted(set(names) | set(manifest.binaries)):
        path = paths.bin_dir / name
        entry: dict[str, object] = {"name": name, "owned": name in manifest.binaries}
        if path.is_file():
            entry["sha256"] = sha256_file(path)
            entry["versions"] = prober.versions(path) or []
            entry["present"] = True
        else:
            entry["present"] = False
        if name in manifest.binaries:
            entry["source"] = manifest.binaries[name].source
        out.append(entry)
    return out


def declared_sources(binaries: Iterable[DeclaredBinary]) -> Mapping[str, DeclaredBinary]:
    return {b.name: b for b in binaries}
