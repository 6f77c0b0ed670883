"""What this node's agent owns: config files, binaries, the spec each file carries.

Kept as JSON in the agent's state dir and replaced atomically, so a restarted
agent knows exactly which files are ours (and never touches the others), which
generation each carries, and the spec it last applied (the base of the gate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cni_operator.node.atomic import atomic_write
from cni_operator.node.paths import HostPaths

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest exists but cannot be read: which files are ours is unknown."""


@dataclass
class ManagedNetwork:
    file: str
    sha256: str
    generation: int
    spec: dict[str, Any]
    # Files this network had before a rename (a priority change), still ours until
    # removed: recorded with the new name before it is written, so a crash in
    # between never leaves an old file of ours that a restart takes for foreign.
    old_files: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [self.file, *self.old_files]


@dataclass
class OwnedBinary:
    sha256: str
    source: str


@dataclass
class Manifest:
    networks: dict[str, ManagedNetwork] = field(default_factory=dict)
    binaries: dict[str, OwnedBinary] = field(default_factory=dict)

    @property
    def config_files(self) -> set[str]:
        return {file for entry in self.networks.values() for file in entry.files}

    def to_json(self) -> bytes:
        data = {
            "version": MANIFEST_VERSION,
            "networks": {k: vars(v) for k, v in sorted(self.networks.items())},
            "binaries": {k: vars(v) for k, v in sorted(self.binaries.items())},
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        return cls(
            networks={k: ManagedNetwork(**v) for k, v in data.get("networks", {}).items()},
            binaries={k: OwnedBinary(**v) for k, v in data.get("binaries", {}).items()},
        )


def load(paths: HostPaths) -> Manifest:
    try:
        raw = paths.manifest.read_bytes()
    except FileNotFoundError:
        return Manifest()
    try:
        return Manifest.from_json(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ManifestError(f"{paths.manifest} cannot be read: {error!r}"[:500]) from None


def save(paths: HostPaths, manifest: Manifest) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(paths.manifest, manifest.to_json(), mode=0o600)
