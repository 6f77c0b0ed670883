"""The net.d layouts of tests/integration/runtimes/corpus: one directory per
layout with `NOTE` (what it shows), `net.d/` (its files, symlinks included) and an
optional `layout.json`: runtime `settings` (max_conf_num, cni_default_network) and
`special` entries git cannot hold (a socket, a mode-000 file, a huge file)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.runtimes.daemon import Settings

CORPUS = Path(__file__).resolve().parents[2] / "tests/integration/runtimes/corpus"


@dataclass(frozen=True)
class Layout:
    name: str
    path: Path
    note: str
    settings: Settings = field(default_factory=Settings)
    special: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    fresh_runtime: bool = False  # needs a runtime of its own (not the shared one)


def load_corpus(root: Path = CORPUS) -> list[Layout]:
    layouts = []
    for entry in sorted(root.iterdir()):
        if not (entry / "net.d").is_dir():
            continue
        setup: dict[str, Any] = {}
        if (entry / "layout.json").exists():
            setup = json.loads((entry / "layout.json").read_text())
        layouts.append(
            Layout(
                entry.name,
                entry,
                (entry / "NOTE").read_text().strip(),
                Settings(**setup.get("settings", {})),
                tuple(setup.get("special", [])),
                bool(setup.get("fresh_runtime", False)),
            )
        )
    return layouts


class Materialized:
    """A layout's entries written into a net.d; holds the sockets it bound."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.entries: list[str] = []

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def materialize(layout: Layout, net_d: Path) -> Materialized:
    """Copy the layout into `net_d` (symlinks as symlinks) and create its specials."""
    made = Materialized()
    source = layout.path / "net.d"
    for entry in sorted(source.iterdir()):
        target = net_d / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copyfile(entry, target)
        made.entries.append(entry.name)
    for special in layout.special:
        target = net_d / special["path"]
        kind = special["kind"]
        if kind == "socket":
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(target))
            made.sockets.append(sock)
        elif kind == "mode000":
            target.write_text(special["content"])
            target.chmod(0)
        elif kind == "huge":
            content = special["content"].encode()
            size = int(special["size_mib"]) << 20
            target.write_bytes(content[:-2] + b" " * (size - len(content)) + content[-2:])
        else:
            raise ValueError(f"{layout.name}: unknown special kind {kind!r}")
        made.entries.append(special["path"])
    return made


def clear(net_d: Path, keep: str) -> None:
    """Remove every entry of `net_d` except `keep`."""
    for entry in net_d.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
