"""The single place that says what "our" plugin binaries are and their bytes.

Today each of our plugin types is a small launcher script whose shebang is this
agent's own Python and which calls the console-script entry point of
`node_plugin.cli` (taken from the package's metadata, so a new plugin needs no
change here). A directory of prebuilt executables named by
`CNIWARDEN_OWN_BIN_DIR` (e.g. `build/cni-bin/`) replaces the launchers: that is
how the static shims will ship.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Protocol

OWN_PREFIX = "cniwarden-"
OWN_BIN_DIR_ENV = "CNIWARDEN_OWN_BIN_DIR"


class OwnBinarySource(Protocol):
    label: str

    def binaries(self) -> Mapping[str, bytes]:
        """Plugin type -> the executable's bytes."""
        ...


class LauncherSource:
    """Shebang launchers into node_plugin's entry points."""

    label = "package-launcher"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def entry_points(self) -> dict[str, str]:
        found = {}
        for entry in metadata.entry_points(group="console_scripts"):
            if entry.name.startswith(OWN_PREFIX) and entry.value.startswith("node_plugin"):
                found[entry.name] = entry.value
        return found

    def binaries(self) -> Mapping[str, bytes]:
        out = {}
        for name, target in sorted(self.entry_points().items()):
            module, _, function = target.partition(":")
            script = (
                f"#!{self.python}\n"
                f"# cniwarden launcher for the {name} CNI plugin (installed by the agent)\n"
                "import sys\n"
                f"from {module} import {function}\n"
                f"sys.exit({function}())\n"
            )
            out[name] = script.encode()
        return out


class DirectorySource:
    """Prebuilt executables named after their plugin type."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.label = f"dir:{directory}"

    def binaries(self) -> Mapping[str, bytes]:
        return {
            path.name: path.read_bytes()
            for path in sorted(self.directory.iterdir())
            if path.is_file() and path.name.startswith(OWN_PREFIX) and os.access(path, os.X_OK)
        }


def default_source() -> OwnBinarySource:
    configured = os.environ.get(OWN_BIN_DIR_ENV)
    if configured:
        return DirectorySource(Path(configured))
    return LauncherSource()
