"""Which file in /etc/cni/net.d each runtime uses, and a verdict for every foreign file.

Pure: works on (file name, bytes) pairs and the bin dir's VERSION answers.
The rules mirror the readers (see shared/notes/runtimes-and-peers.md):

- containerd (go-cni): `.conf`, `.conflist`, `.json` in bytewise order; loads files
  until it has `max_conf_num` (1) networks; any error on a file it reads fails the
  whole load, so the node goes NotReady. A `.conf` without `type` is an error.
- CRI-O (ocicni): the same order; a file that does not parse, names a missing
  binary, or asks for a version its binaries do not support is skipped, and the
  first valid file is the network.
- libcni/cnitool: looks a network up by name in `.conflist` files first, then in
  `.conf`/`.json`; an invalid `.conflist` met on the way fails the lookup. Its
  parsing rules are the ones `parse_config` applies; no separate view is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from cni_operator.gojson import go_field
from cni_operator.rendering import referenced_types

CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")


class Verdict(StrEnum):
    """What a foreign file means for our networks."""

    WINS_OVER_OURS = "WinsOverOurs"
    INVALID = "InvalidConfig"
    MISSING_BINARY = "MissingBinary"
    INCOMPATIBLE_VERSION = "IncompatibleVersion"
    SHADOWED_BY_OURS = "ShadowedByOurs"


def is_config_name(name: str) -> bool:
    return not name.startswith(".") and name.endswith(CONFIG_SUFFIXES)


def sort_key(name: str) -> bytes:
    """Go's sort.Strings compares bytes; so do we (uppercase before lowercase, 10 < 2)."""
    return name.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class ParsedConfig:
    """One config file as libcni would load it."""

    name: str
    network: str | None = None
    cni_version: str | None = None
    types: tuple[str, ...] = ()
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None


def parse_config(name: str, data: bytes | None) -> ParsedConfig:
    """Load a file the way libcni's ConfFromBytes / ConfListFromBytes would."""
    if data is None:
        return ParsedConfig(name, error="cannot be read")
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as error:
        truncated = error.msg.startswith("Unterminated string") or error.pos >= len(
            data.decode("utf-8", "replace").rstrip()
        )
        detail = "unexpected end of JSON input (truncated?)" if truncated else str(error)
        return ParsedConfig(name, error=f"invalid JSON: {detail}")
    except UnicodeDecodeError as error:
        return ParsedConfig(name, error=f"invalid JSON: {error}")
    if not isinstance(raw, dict):
        return ParsedConfig(name, error="invalid JSON: top level is not an object")
    version = go_field(raw, "cniVersion") or "0.1.0"
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        return ParsedConfig(name, error=f"invalid cniVersion {version!r}")
    network = go_field(raw, "name")
    if network is not None and not isinstance(network, str):
        return ParsedConfig(name, error=f"'name' must be a string, not {_json_kind(network)}")
    if name.endswith(".conflist"):
        if not network:
            return ParsedConfig(name, error="conflist has no 'name'")
        plugins = go_field(raw, "plugins")
        if not isinstance(plugins, list):
            return ParsedConfig(name, network, version, error="conflist has no 'plugins' list")
        if not plugins:
            return ParsedConfig(name, network, version, error="conflist has no plugins")
        for index, plugin in enumerate(plugins):
            problem = _plugin_problem(plugin)
            if problem:
                return ParsedConfig(name, network, version, error=f"plugins[{index}] {problem}")
    else:
        problem = _plugin_problem(raw)
        if problem:
            hint = " (it holds a conflist: rename it to .conflist)" if "plugins" in raw else ""
            return ParsedConfig(name, network, version, error=f"config {problem}{hint}")
    return ParsedConfig(name, network, version, tuple(referenced_types(raw)))


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _plugin_problem(plugin: Any) -> str | None:
    """Why libcni could not load this plugin object (its NetConf), if it could not:
    no `type`, or a field of the wrong JSON kind (Go's decoder refuses the file)."""
    if not isinstance(plugin, dict):
        return "is not an object"
    kind = go_field(plugin, "type")
    if kind is not None and not isinstance(kind, str):
        return f"has 'type' as {_json_kind(kind)}, not a string"
    if not kind:
        return "has no 'type'"
    ipam = go_field(plugin, "ipam")
    if ipam is not None and not isinstance(ipam, dict):
        return f"has 'ipam' as {_json_kind(ipam)}, not an object"
    ipam_type = None if ipam is None else go_field(ipam, "type")
    if ipam_type is not None and not isinstance(ipam_type, str):
        return f"has 'ipam.type' as {_json_kind(ipam_type)}, not a string"
    return None


@dataclass(frozen=True)
class IgnoreBinaries:
    """Judge files by name order and syntax alone, leaving the bin dir out.

    For questions the binaries cannot change the answer to: which network
    containerd picks (the first valid file, whatever its binaries) and which
    foreign files sort before ours. Saying so, instead of passing an empty
    versions map, keeps every file from looking `MissingBinary` on the way.
    """


IGNORE_BINARIES = IgnoreBinaries()
# Binary name -> the versions its VERSION command lists (None: it did not answer);
# a missing key means the binary is absent from the bin dir.
BinaryVersions: TypeAlias = Mapping[str, Sequence[str] | None]


def binary_problem(
    parsed: ParsedConfig, versions: BinaryVersions | IgnoreBinaries
) -> tuple[Verdict, str] | None:
    """The first reason the runtime could not run this (valid) config, if any."""
    if isinstance(versions, IgnoreBinaries):
        return None
    for kind in parsed.types:
        if kind not in versions:
            return Verdict.MISSING_BINARY, f"plugin binary {kind!r} is missing from the bin dir"
    for kind in parsed.types:
        supported = versions[kind]
        if supported is not None and parsed.cni_version not in supported:
            return (
                Verdict.INCOMPATIBLE_VERSION,
                f"{kind!r} supports {', '.join(supported)}, config asks for {parsed.cni_version}",
            )
    return None


@dataclass(frozen=True)
class RuntimeView:
    """What one runtime makes of the directory."""

    runtime: str
    file: str | None
    network: str | None
    ours: bool
    healthy: bool
    message: str


@dataclass(frozen=True)
class FileVerdict:
    file: str
    verdicts: tuple[Verdict, ...]
    detail: str
    node_killer: bool = False


@dataclass
class DirAnalysis:
    containerd: RuntimeView
    crio: RuntimeView
    foreign: list[FileVerdict] = field(default_factory=list)
    ours_order: list[str] = field(default_factory=list)

    @property
    def shadowing_files(self) -> list[str]:
        """Foreign files that take the runtime away from ours (either runtime)."""
        return [
            v.file for v in self.foreign if Verdict.WINS_OVER_OURS in v.verdicts or v.node_killer
        ]

    @property
    def broken(self) -> bool:
        """True when a runtime on this node cannot start pods at all."""
        return not (self.containerd.healthy and self.crio.healthy)


def _containerd_view(
    ordered: list[ParsedConfig], ours: set[str], versions: BinaryVersions | IgnoreBinaries
) -> RuntimeView:
    if not ordered:
        return RuntimeView("containerd", None, None, False, False, "no CNI config: node NotReady")
    first = ordered[0]
    if not first.valid:
        return RuntimeView(
            "containerd",
            first.name,
            None,
            first.name in ours,
            False,
            f"fails to load {first.name} ({first.error}): no pod network, node NotReady",
        )
    problem = binary_problem(first, versions)
    message = "in use" if problem is None else f"in use, but every pod fails: {problem[1]}"
    return RuntimeView(
        "containerd", first.name, first.network, first.name in ours, problem is None, message
    )


def _crio_view(
    ordered: list[ParsedConfig], ours: set[str], versions: BinaryVersions | IgnoreBinaries
) -> RuntimeView:
    skipped: list[str] = []
    for parsed in ordered:
        problem = None if not parsed.valid else binary_problem(parsed, versions)
        if parsed.valid and problem is None:
            message = "in use" + (f" (skipped {', '.join(skipped)})" if skipped else "")
            return RuntimeView(
                "crio", parsed.name, parsed.network, parsed.name in ours, True, message
            )
        skipped.append(parsed.name)
    return RuntimeView("crio", None, None, False, False, "no valid CNI config: node NotReady")


def analyze(
    files: Iterable[tuple[str, bytes | None]],
    ours: Iterable[str],
    versions: BinaryVersions | IgnoreBinaries,
) -> DirAnalysis:
    """Analyze a config dir.

    `files`: (name, content) of every entry; non-config names are ignored.
    `ours`: the file names we manage. `versions`: binary name -> VERSION answer,
    or `IGNORE_BINARIES` to judge order and syntax alone.
    """
    our_names = set(ours)
    ordered = sorted(
        (parse_config(name, data) for name, data in files if is_config_name(name)),
        key=lambda p: sort_key(p.name),
    )
    first_ours = next((p.name for p in ordered if p.name in our_names), None)
    first_valid = next((p.name for p in ordered if p.valid), None)
    analysis = DirAnalysis(
        containerd=_containerd_view(ordered, our_names, versions),
        crio=_crio_view(ordered, our_names, versions),
        ours_order=[p.name for p in ordered if p.name in our_names],
    )
    for parsed in ordered:
        if parsed.name in our_names:
            continue
        # Without any file of ours nothing can win over ours; containerd still dies on
        # an invalid file it reads, i.e. one sorting before the first valid file.
        before_ours = first_ours is not None and sort_key(parsed.name) < sort_key(first_ours)
        read_by_containerd = first_valid is None or sort_key(parsed.name) < sort_key(first_valid)
        verdicts: list[Verdict] = []
        details: list[str] = []
        killer = False
        if not parsed.valid:
            verdicts.append(Verdict.INVALID)
            if read_by_containerd:
                killer = True
                details.append(
                    f"{parsed.error}: containerd fails to load the CNI config and the node "
                    "goes NotReady; CRI-O skips it"
                )
            else:
                details.append(
                    f"{parsed.error}: containerd stops before it while a valid file sorts "
                    "first; fatal for containerd once that file is removed"
                )
        else:
            problem = binary_problem(parsed, versions)
            if problem is not None:
                verdicts.append(problem[0])
                details.append(problem[1])
            if before_ours:
                verdicts.insert(0, Verdict.WINS_OVER_OURS)
                if problem is None:
                    details.insert(0, "containerd and CRI-O use this file instead of ours")
                else:
                    details.insert(
                        0,
                        "containerd uses this file instead of ours and every pod fails; "
                        "CRI-O skips it",
                    )
            elif first_ours is not None:
                verdicts.append(Verdict.SHADOWED_BY_OURS)
                details.append("sorts after ours; no runtime uses it")
        analysis.foreign.append(
            FileVerdict(parsed.name, tuple(verdicts), "; ".join(details), killer)
        )
    return analysis


def effective_network(files: Mapping[str, bytes | None]) -> str | None:
    """The network containerd gives new pods with this directory content: the first
    valid file's, whatever its binaries (a missing binary fails the pods, it does
    not make containerd pick another file)."""
    return analyze(files.items(), (), IGNORE_BINARIES).containerd.network


def parse_json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
