"""Which file in /etc/cni/net.d each runtime uses, and a verdict for every foreign file.

Pure: works on (file name, bytes) pairs and the bin dir's VERSION answers. The
rules are the readers' own code (libcni, go-cni, ocicni), one rule set per runtime
family and version range, and tests/integration/runtimes proves each against the
real runtime (docs/runtime-model.md has the table).

Entry points (stable; the agent and the doctor call them):

- `rules_for(kind, version)` -> `RuntimeRules`: the rules of one runtime, e.g.
  `rules_for("containerd", (2, 4, 2))` or `RuntimeRules("crio", (1, 34, 0),
  default_network="podnet")`; `version=None` when the version is unknown.
- `predict(files, runtime=rules, versions=..., ours=...)` -> `RuntimeView`: what
  that runtime makes of the directory (the network new pods get, whether its CRI
  Status says NetworkReady, whether pods can start).
- `predict_all(files, versions=..., ours=...)` -> `{label: RuntimeView}`: judged by
  every rule set, for a node whose runtime cannot be identified.
- `analyze(files, ours, versions, runtimes=None)` -> `DirAnalysis`: the views and a
  verdict per foreign file; `runtimes=None` judges by every rule set.

`files`: (name, content) of every entry of net.d; content None when it cannot be
read (a dangling symlink, a symlink to a directory, a socket). Real directories
are left out, except that files inside `net.d/<dir>/` are given as `<dir>/<file>`
(libcni >= 1.3 loads a network's plugins from `net.d/<network name>/*.conf`).
`versions`: binary name -> the versions its VERSION command lists (None: it did not
answer); a binary absent from the bin dir has no key. `IGNORE_BINARIES` judges by
name order and syntax alone.

The rules (see shared/notes/runtimes-and-peers.md and docs/runtime-model.md):

- Every reader lists `.conf`, `.conflist` and `.json` names in bytewise order,
  dot-files included (libcni's ConfFiles skips only real directories).
- containerd (go-cni): loads the first `max_conf_num` files (0: all); any error
  on a file it reads fails the whole load: NetworkReady=false. containerd >= 2.0
  also asks each loaded network with cniVersion >= 1.1.0 for STATUS, so a missing
  binary or one without that version makes it NetworkReady=false too.
- CRI-O (ocicni): skips a file that does not load, whose plugin types (not their
  IPAM delegates) are missing or do not list its cniVersion, or whose network
  name an earlier file took; the first remaining file is the network, unless
  `cni_default_network` names another. A file with an empty name is called by
  its file name.
- libcni <= 1.1 loads a non-semver cniVersion and an empty name (pods then fail:
  the plugin refuses the version, libcni refuses the name); libcni >= 1.2 reads
  the `cniVersions` array (the highest entry up to 1.1.0 wins); libcni >= 1.3
  appends `net.d/<name>/*.conf` to a conflist's plugins and needs no `plugins` key.
- Conflist keys (`name`, `cniVersion`, `plugins`, ...) are matched exactly; plugin
  objects and `.conf` files are decoded like a Go struct (keys case-insensitive).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from cni_operator.gojson import go_field
from cni_operator.rendering import referenced_types

CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
_BOM = b"\xef\xbb\xbf"
_GO_INT = re.compile(r"[+-]?[0-9]+")
_NETWORK_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
LIBCNI_SPEC = (1, 1, 0)  # version.Current() of libcni >= 1.2


class Verdict(StrEnum):
    """What a foreign file means for our networks."""

    WINS_OVER_OURS = "WinsOverOurs"
    INVALID = "InvalidConfig"
    MISSING_BINARY = "MissingBinary"
    INCOMPATIBLE_VERSION = "IncompatibleVersion"
    SHADOWED_BY_OURS = "ShadowedByOurs"


def is_config_name(name: str) -> bool:
    """A name every reader lists (libcni's ConfFiles: the extension alone counts,
    so `.00-x.conflist` is listed and sorts before `00-x.conflist`)."""
    return "/" not in name and name.endswith(CONFIG_SUFFIXES)


def sort_key(name: str) -> bytes:
    """Go's sort.Strings compares bytes; so do we (uppercase before lowercase, 10 < 2)."""
    return name.encode("utf-8", "surrogateescape")


# --- runtimes and their rule sets -------------------------------------------------


@dataclass(frozen=True)
class RuleSet:
    """How one runtime family, over a version range, reads net.d."""

    name: str
    kind: str  # "containerd" | "crio"
    since: tuple[int, ...]  # inclusive
    until: tuple[int, ...] | None  # exclusive
    libcni: tuple[int, int]
    status_verb: bool  # CRI Status runs the CNI STATUS verb (cniVersion >= 1.1.0)
    source: str  # where the rules were read (module versions)


RULE_SETS: tuple[RuleSet, ...] = (
    RuleSet(
        "containerd-1",
        "containerd",
        (0,),
        (2, 0),
        (1, 1),
        False,
        "containerd 1.6/1.7: go-cni 1.1.6-1.1.9, libcni 1.1.2",
    ),
    RuleSet(
        "containerd-2.0",
        "containerd",
        (2, 0),
        (2, 1),
        (1, 2),
        True,
        "containerd 2.0: go-cni 1.1.10, libcni 1.2.3",
    ),
    RuleSet(
        "containerd-2",
        "containerd",
        (2, 1),
        None,
        (1, 3),
        True,
        "containerd 2.1-2.4: go-cni 1.1.12-1.1.14, libcni 1.3.0-1.3.1",
    ),
    RuleSet(
        "crio-1.30", "crio", (0,), (1, 31), (1, 1), False, "CRI-O 1.30: ocicni 0.4.2, libcni 1.1.2"
    ),
    RuleSet("crio", "crio", (1, 31), None, (1, 3), True, "CRI-O 1.34: ocicni 0.4.3, libcni 1.3.0"),
)
KINDS = ("containerd", "crio")


def rule_set_for(kind: str, version: tuple[int, ...] | None) -> RuleSet:
    """The rule set of `kind` at `version`; an unknown version gets the newest."""
    if kind not in KINDS:
        raise ValueError(f"unknown runtime kind {kind!r} (known: {', '.join(KINDS)})")
    family = [r for r in RULE_SETS if r.kind == kind]
    if version is None:
        return family[-1]
    for rules in family:
        if rules.since <= version and (rules.until is None or version < rules.until):
            return rules
    return family[-1]


@dataclass(frozen=True)
class RuntimeRules:
    """One runtime, as the model judges it: its kind, version and CNI settings.

    `max_conf_num`: containerd's `[plugins.cri.cni] max_conf_num` (0: every file).
    `default_network`: CRI-O's `[crio.network] cni_default_network`.
    """

    kind: str
    version: tuple[int, ...] | None = None
    max_conf_num: int = 1
    default_network: str = ""

    def __post_init__(self) -> None:
        rule_set_for(self.kind, self.version)  # refuses an unknown kind
        if self.max_conf_num < 0:
            raise ValueError(f"max_conf_num must be >= 0, not {self.max_conf_num}")

    @property
    def rule_set(self) -> RuleSet:
        return rule_set_for(self.kind, self.version)

    @property
    def libcni(self) -> tuple[int, int]:
        return self.rule_set.libcni

    @property
    def label(self) -> str:
        if self.version is None:
            return f"{self.kind} (version unknown: {self.rule_set.name} rules)"
        return f"{self.kind} {'.'.join(map(str, self.version))}"


def rules_for(kind: str, version: tuple[int, ...] | None = None, **settings: Any) -> RuntimeRules:
    return RuntimeRules(kind, version, **settings)


# One representative per rule set (a version the rules were read from): what an
# unidentified runtime is judged by.
ALL_RUNTIMES: tuple[RuntimeRules, ...] = (
    RuntimeRules("containerd", (1, 7)),
    RuntimeRules("containerd", (2, 0)),
    RuntimeRules("containerd", (2, 4)),
    RuntimeRules("crio", (1, 30)),
    RuntimeRules("crio", (1, 34)),
)
DEFAULT_CONTAINERD = ALL_RUNTIMES[0]
DEFAULT_CRIO = ALL_RUNTIMES[-1]


# --- parsing one file as libcni does ----------------------------------------------


@dataclass(frozen=True)
class ParsedConfig:
    """One config file as libcni loads it."""

    name: str
    network: str | None = None
    cni_version: str | None = None
    types: tuple[str, ...] = ()  # every binary it makes the runtime exec
    error: str | None = None
    plugin_types: tuple[str, ...] = ()  # the plugins libcni execs itself (VERSION, STATUS)
    inline_plugins: int = 1  # plugins in the file itself (libcni >= 1.3 may add net.d/<name>/)

    @property
    def valid(self) -> bool:
        return self.error is None


class _GoJSONError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _GoJSONError(f"invalid character {name[0]!r} looking for beginning of value")


def go_json(data: bytes) -> Any:
    """Decode as Go's encoding/json: no BOM, no NaN/Infinity, invalid UTF-8 replaced."""
    if data.startswith(_BOM):
        raise _GoJSONError("invalid character 'ï' looking for beginning of value (a UTF-8 BOM)")
    text = data.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        truncated = error.msg.startswith("Unterminated string") or error.pos >= len(text.rstrip())
        raise _GoJSONError(
            "unexpected end of JSON input (truncated?)" if truncated else str(error)
        ) from None


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """libcni's version.ParseVersion: "" is 0.1.0; up to three integer parts."""
    if text == "":
        return (0, 1, 0)
    parts = text.split(".")
    if len(parts) > 3 or not all(_GO_INT.fullmatch(p) for p in parts):
        return None
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return (numbers[0], numbers[1], numbers[2])


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _struct_problem(plugin: Any) -> str | None:
    """Why Go could not decode this object into libcni's NetConf/PluginConf (keys
    case-insensitive, null is a zero value, a field of the wrong kind fails)."""
    if plugin is None:
        return "has no 'type'"
    if not isinstance(plugin, dict):
        return f"is {_json_kind(plugin)}, not an object"
    for key in ("cniVersion", "name", "type"):
        value = go_field(plugin, key)
        if value is not None and not isinstance(value, str):
            return f"has '{key}' as {_json_kind(value)}, not a string"
    capabilities = go_field(plugin, "capabilities")
    if capabilities is not None and (
        not isinstance(capabilities, dict)
        or not all(v is None or isinstance(v, bool) for v in capabilities.values())
    ):
        return "has 'capabilities' that is not an object of booleans"
    ipam = go_field(plugin, "ipam")
    if ipam is not None and not isinstance(ipam, dict):
        return f"has 'ipam' as {_json_kind(ipam)}, not an object"
    ipam_type = None if ipam is None else go_field(ipam, "type")
    if ipam_type is not None and not isinstance(ipam_type, str):
        return f"has 'ipam.type' as {_json_kind(ipam_type)}, not a string"
    dns = go_field(plugin, "dns")
    if dns is not None and not isinstance(dns, dict):
        return f"has 'dns' as {_json_kind(dns)}, not an object"
    prev = go_field(plugin, "prevResult")
    if prev is not None and not isinstance(prev, dict):
        return f"has 'prevResult' as {_json_kind(prev)}, not an object"
    if not go_field(plugin, "type"):
        return "has no 'type'"
    return None


def _plugin_types(plugins: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    out: list[str] = []
    for plugin in plugins:
        kind = go_field(plugin, "type")
        if isinstance(kind, str) and kind and kind not in out:
            out.append(kind)
    return tuple(out)


def _all_types(plugins: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    out: list[str] = []
    for plugin in plugins:
        for kind in referenced_types(plugin):
            if kind not in out:
                out.append(kind)
    return tuple(out)


def _read_bool(raw: Mapping[str, Any], key: str, libcni: tuple[int, int]) -> bool | str:
    """A conflist flag: a bool, or (libcni >= 1.2) "true"/"false" in any case.
    Returns the error text when the value is of another kind."""
    if key not in raw:
        return False
    value = raw[key]
    if isinstance(value, bool):
        return value
    if libcni >= (1, 2) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return f"invalid {key} {json.dumps(value)}"


def _plugin_dir_files(
    files: Mapping[str, bytes | None], network: str
) -> list[tuple[str, bytes | None]]:
    """libcni 1.3's NetworkPluginConfsFromFiles: `.conf` entries of net.d/<network>/
    (an empty name is net.d itself)."""
    rel = posixpath.normpath(network) if network else "."
    if rel.startswith(("/", "../")) or rel == "..":
        return []
    prefix = "" if rel == "." else rel + "/"
    found = [
        (name, data)
        for name, data in files.items()
        if name.startswith(prefix) and "/" not in name[len(prefix) :] and name.endswith(".conf")
    ]
    return sorted(found, key=lambda item: sort_key(item[0]))


def parse_config(
    name: str,
    data: bytes | None,
    libcni: tuple[int, int] = (1, 1),
    directory: Mapping[str, bytes | None] | None = None,
) -> ParsedConfig:
    """Load a file as the runtime's libcni does: ConfListFromFile for `.conflist`,
    else ConfFromFile (which must have a `type`) up-converted to a list.

    `directory`: every entry of net.d, for libcni >= 1.3's `net.d/<name>/` plugins.
    """
    if data is None:
        return ParsedConfig(name, error="cannot be read")
    try:
        raw = go_json(data)
    except _GoJSONError as error:
        return ParsedConfig(name, error=f"invalid JSON: {error}")
    if name.endswith(".conflist"):
        return _parse_conflist(name, raw, libcni, directory)
    problem = _struct_problem(raw)
    if problem:
        hint = (
            " (it holds a conflist: rename it to .conflist)"
            if isinstance(raw, dict) and "plugins" in raw
            else ""
        )
        network = go_field(raw, "name") if isinstance(raw, dict) else None
        return ParsedConfig(
            name,
            network if isinstance(network, str) else None,
            error=f"config {problem}{hint}",
        )
    assert isinstance(raw, dict)
    return ParsedConfig(
        name,
        go_field(raw, "name") or "",
        go_field(raw, "cniVersion") or "",
        _all_types([raw]),
        plugin_types=_plugin_types([raw]),
    )


def _parse_conflist(
    name: str, raw: Any, libcni: tuple[int, int], directory: Mapping[str, bytes | None] | None
) -> ParsedConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return ParsedConfig(name, error=f"invalid JSON: a conflist is {_json_kind(raw)}")
    if "name" not in raw:
        return ParsedConfig(name, error="conflist has no 'name'")
    network = raw["name"]
    if not isinstance(network, str):
        return ParsedConfig(name, error=f"conflist 'name' is {_json_kind(network)}, not a string")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        return ParsedConfig(name, network, error=f"conflist 'cniVersion' is {_json_kind(version)}")

    def failed(error: str) -> ParsedConfig:
        return ParsedConfig(name, network, version, error=error)

    if libcni >= (1, 2) and "cniVersions" in raw:
        listed = raw["cniVersions"]
        if not isinstance(listed, list):
            return failed(f"'cniVersions' is {_json_kind(listed)}, not an array")
        usable: list[tuple[tuple[int, int, int], str]] = []
        for index, entry in enumerate([*listed, *([version] if version else [])]):
            parsed = parse_go_version(entry) if isinstance(entry, str) else None
            if parsed is None:
                what = f"cniVersions[{index}]" if index < len(listed) else "cniVersion"
                return failed(f"invalid {what} {json.dumps(entry)}")
            if parsed <= LIBCNI_SPEC:
                usable.append((parsed, entry))
        if usable:
            version = max(usable)[1]
    flags = ["disableCheck"] + (["disableGC"] if libcni >= (1, 2) else [])
    flags += ["loadOnlyInlinedPlugins"] if libcni >= (1, 3) else []
    values: dict[str, bool] = {}
    for flag in flags:
        value = _read_bool(raw, flag, libcni)
        if isinstance(value, str):
            return failed(value)
        values[flag] = value
    inline_only = values.get("loadOnlyInlinedPlugins", False)
    plugins: list[Mapping[str, Any]] = []
    if "plugins" not in raw:
        if libcni < (1, 3) or inline_only:
            return failed("conflist has no 'plugins' list")
    else:
        listed_plugins = raw["plugins"]
        if not isinstance(listed_plugins, list):
            return failed(f"conflist 'plugins' is {_json_kind(listed_plugins)}, not an array")
        if not listed_plugins:
            return failed("conflist has no plugins")
        for index, plugin in enumerate(listed_plugins):
            problem = _struct_problem(plugin)
            if problem:
                return failed(f"plugins[{index}] {problem}")
            plugins.append(plugin)
    if libcni >= (1, 3) and not inline_only:
        for path, data in _plugin_dir_files(directory or {}, network):
            if data is None:
                return failed(f"plugin file {path} cannot be read")
            try:
                plugin = go_json(data)
            except _GoJSONError as error:
                return failed(f"plugin file {path}: invalid JSON: {error}")
            problem = _struct_problem(plugin)
            if problem:
                return failed(f"plugin file {path} {problem}")
            plugins.append(plugin)
        if not plugins:
            return failed(f"no plugin configs found (no 'plugins' and no {network or '.'}/*.conf)")
    return ParsedConfig(
        name,
        network,
        version,
        _all_types(plugins),
        plugin_types=_plugin_types(plugins),
        inline_plugins=len(raw.get("plugins") or []),
    )


# --- binaries ---------------------------------------------------------------------


@dataclass(frozen=True)
class IgnoreBinaries:
    """Judge files by name order and syntax alone, leaving the bin dir out.

    For questions the binaries cannot change the answer to: which files sort
    before ours. Saying so, instead of passing an empty versions map, keeps every
    file from looking `MissingBinary` on the way.
    """


IGNORE_BINARIES = IgnoreBinaries()
# Binary name -> the versions its VERSION command lists (None: it did not answer);
# a missing key means the binary is absent from the bin dir.
BinaryVersions: TypeAlias = Mapping[str, Sequence[str] | None]


def _requested_version(parsed: ParsedConfig) -> str:
    return parsed.cni_version or "0.1.0"


def binary_problem(
    parsed: ParsedConfig,
    versions: BinaryVersions | IgnoreBinaries,
    kinds: Sequence[str] | None = None,
) -> tuple[Verdict, str] | None:
    """The first reason the runtime could not run this (valid) config, if any.
    `kinds`: the binaries to check (default: every one it execs, IPAM included)."""
    if isinstance(versions, IgnoreBinaries):
        return None
    wanted = parsed.types if kinds is None else kinds
    for kind in wanted:
        if kind not in versions or "/" in kind:
            return Verdict.MISSING_BINARY, f"plugin binary {kind!r} is missing from the bin dir"
    asked = _requested_version(parsed)
    for kind in wanted:
        supported = versions[kind]
        if supported is not None and asked not in supported:
            return (
                Verdict.INCOMPATIBLE_VERSION,
                f"{kind!r} supports {', '.join(supported)}, config asks for {asked}",
            )
    return None


def _crio_validation(parsed: ParsedConfig, versions: BinaryVersions | IgnoreBinaries) -> str | None:
    """libcni's ValidateNetworkList: each plugin type is found and its VERSION answer
    lists the config's version. IPAM delegates are not asked."""
    if isinstance(versions, IgnoreBinaries):
        return None
    problem = binary_problem(parsed, versions, parsed.plugin_types)
    if problem is not None:
        return problem[1]
    for kind in parsed.plugin_types:
        if versions[kind] is None:
            return f"{kind!r} did not answer VERSION"
    return None


def _network_name_problem(network: str) -> str | None:
    """libcni's ValidateNetworkName, run on every ADD."""
    if not network:
        return "its network name is empty (libcni: missing network name)"
    if not _NETWORK_NAME.fullmatch(network):
        return f"its network name {network!r} has characters libcni refuses"
    return None


# --- what one runtime makes of the directory --------------------------------------


@dataclass(frozen=True)
class RuntimeView:
    """What one runtime makes of the directory.

    `file`/`network`: the default network (pods' eth0); `networks`: every network
    a pod is attached to (containerd with max_conf_num > 1 attaches several);
    `network_ready`: what the runtime's CRI Status says; `healthy`: new pods get a
    network (NetworkReady and their ADD can succeed).
    """

    runtime: str
    file: str | None
    network: str | None
    ours: bool
    healthy: bool
    message: str
    network_ready: bool | None = None
    networks: tuple[str, ...] = ()
    judged_by: str = ""

    def __post_init__(self) -> None:
        if self.network_ready is None:
            object.__setattr__(self, "network_ready", self.healthy)


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
    views: dict[str, RuntimeView] = field(default_factory=dict)  # by RuntimeRules.label

    @property
    def shadowing_files(self) -> list[str]:
        """Foreign files that take the runtime away from ours (either runtime)."""
        return [
            v.file for v in self.foreign if Verdict.WINS_OVER_OURS in v.verdicts or v.node_killer
        ]

    @property
    def broken(self) -> bool:
        """True when a runtime judged for this node cannot start pods at all."""
        views = list(self.views.values()) or [self.containerd, self.crio]
        return not all(v.healthy for v in views)


class _Directory:
    """net.d parsed under one libcni version (each file once)."""

    def __init__(self, files: Mapping[str, bytes | None], libcni: tuple[int, int]) -> None:
        self.files = files
        self.libcni = libcni
        self.names = sorted((n for n in files if is_config_name(n)), key=sort_key)
        self._parsed: dict[str, ParsedConfig] = {}

    def load(self, name: str) -> ParsedConfig:
        if name not in self._parsed:
            self._parsed[name] = parse_config(name, self.files[name], self.libcni, self.files)
        return self._parsed[name]


def _status_problem(parsed: ParsedConfig, versions: BinaryVersions | IgnoreBinaries) -> str | None:
    """containerd >= 2.0 runs STATUS on each plugin of a network >= 1.1.0."""
    version = parse_go_version(parsed.cni_version or "")
    if version is None or version < (1, 1, 0):
        return None
    problem = binary_problem(parsed, versions, parsed.plugin_types)
    return None if problem is None else f"STATUS of {parsed.name} fails: {problem[1]}"


def _pod_problem(
    parsed: ParsedConfig,
    network: str,
    versions: BinaryVersions | IgnoreBinaries,
    libcni: tuple[int, int],
) -> str | None:
    """Why every ADD of this network fails, if it does."""
    problem = _network_name_problem(network)
    if problem is None:
        found = binary_problem(parsed, versions)
        problem = None if found is None else found[1]
    version = parse_go_version(parsed.cni_version or "")
    newest = (1, 0, 0) if libcni < (1, 2) else LIBCNI_SPEC
    if problem is None and version is not None and version > newest:
        # The plugin answers in the config's version, which this libcni cannot decode.
        problem = f"libcni {libcni[0]}.{libcni[1]} cannot read a {parsed.cni_version} result"
    return problem


def _containerd_view(
    directory: _Directory,
    rules: RuntimeRules,
    ours: set[str],
    versions: BinaryVersions | IgnoreBinaries,
) -> RuntimeView:
    label = rules.label

    def not_ready(file: str | None, why: str) -> RuntimeView:
        return RuntimeView(
            "containerd",
            file,
            None,
            file in ours,
            False,
            f"{why}: no pod network, node NotReady (NetworkReady=false)",
            network_ready=False,
            judged_by=label,
        )

    if not directory.names:
        return not_ready(None, "no network config found")
    loaded: list[ParsedConfig] = []
    for name in directory.names:
        parsed = directory.load(name)
        if not parsed.valid:
            return not_ready(name, f"fails to load {name} ({parsed.error})")
        loaded.append(parsed)
        if len(loaded) == rules.max_conf_num:
            break
    first = loaded[0]
    networks = tuple(p.network or "" for p in loaded)
    if rules.rule_set.status_verb:
        for parsed in loaded:
            status = _status_problem(parsed, versions)
            if status is not None:
                view = not_ready(first.name, status)
                return RuntimeView(
                    "containerd",
                    first.name,
                    first.network,
                    first.name in ours,
                    False,
                    view.message,
                    network_ready=False,
                    networks=networks,
                    judged_by=label,
                )
    problem = next(
        (
            f"{p.name}: {why}"
            for p in loaded
            if (why := _pod_problem(p, p.network or "", versions, rules.libcni)) is not None
        ),
        None,
    )
    message = "in use" if problem is None else f"in use, but every pod fails: {problem}"
    return RuntimeView(
        "containerd",
        first.name,
        first.network,
        first.name in ours,
        problem is None,
        message,
        network_ready=True,
        networks=networks,
        judged_by=label,
    )


def _crio_view(
    directory: _Directory,
    rules: RuntimeRules,
    ours: set[str],
    versions: BinaryVersions | IgnoreBinaries,
) -> RuntimeView:
    label = rules.label
    networks: dict[str, ParsedConfig] = {}
    default = ""
    skipped: list[str] = []
    for name in directory.names:
        parsed = directory.load(name)
        problem = parsed.error if not parsed.valid else _crio_validation(parsed, versions)
        network = parsed.network or name  # ocicni names an unnamed network by its file
        if problem is None and network in networks:
            problem = f"network {network!r} is already defined by {networks[network].name}"
        if problem is not None:
            skipped.append(name)
            continue
        networks[network] = parsed
        default = default or network
    wanted = rules.default_network or default
    chosen = networks.get(wanted)
    if chosen is None:
        why = (
            f"cni_default_network {wanted!r} is not among the valid networks"
            if rules.default_network
            else "no valid CNI config"
        )
        # CRI-O stops polling once its network was ready: a CRI-O that has been
        # ready since it started keeps saying NetworkReady=true (kubelet keeps the
        # node Ready) while every new sandbox fails.
        why += (
            "; a CRI-O that was ready since it started still reports NetworkReady=true "
            "and every new pod fails"
        )
        return RuntimeView(
            "crio",
            None,
            None,
            False,
            False,
            f"{why}: node NotReady (NetworkReady=false)",
            network_ready=False,
            judged_by=label,
        )
    problem = _pod_problem(chosen, chosen.network or "", versions, rules.libcni)
    if problem is None and chosen.inline_plugins == 0:
        # ocicni 0.4.3 re-reads the network from libcni's cache, without the
        # net.d/<name>/ plugins, and indexes its first plugin: CRI-O panics.
        problem = "CRI-O crashes creating the sandbox (its plugins are only in net.d/<name>/)"
    elif problem is not None and not chosen.network:
        # ocicni names it by its file for ADD, but the sandbox's status check reads
        # libcni's cache under the empty name and fails.
        problem = "its network name is empty (CRI-O cannot find the cached result)"
    message = "in use" + (f" (skipped {', '.join(skipped)})" if skipped else "")
    if problem is not None:
        message += f", but every pod fails: {problem}"
    return RuntimeView(
        "crio",
        chosen.name,
        wanted,
        chosen.name in ours,
        problem is None,
        message,
        network_ready=True,
        networks=(wanted,),
        judged_by=label,
    )


def predict(
    files: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None],
    runtime: RuntimeRules,
    versions: BinaryVersions | IgnoreBinaries = IGNORE_BINARIES,
    ours: Iterable[str] = (),
) -> RuntimeView:
    """What `runtime` makes of this net.d (see the module docstring)."""
    entries = dict(files.items() if isinstance(files, Mapping) else files)
    directory = _Directory(entries, runtime.libcni)
    view = _containerd_view if runtime.kind == "containerd" else _crio_view
    return view(directory, runtime, set(ours), versions)


def predict_all(
    files: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None],
    versions: BinaryVersions | IgnoreBinaries = IGNORE_BINARIES,
    ours: Iterable[str] = (),
    runtimes: Sequence[RuntimeRules] = ALL_RUNTIMES,
) -> dict[str, RuntimeView]:
    """Judged by every rule set: for a runtime that cannot be identified."""
    entries = dict(files.items() if isinstance(files, Mapping) else files)
    return {r.label: predict(entries, r, versions, ours) for r in runtimes}


def analyze(
    files: Iterable[tuple[str, bytes | None]],
    ours: Iterable[str],
    versions: BinaryVersions | IgnoreBinaries,
    runtimes: Sequence[RuntimeRules] | None = None,
) -> DirAnalysis:
    """Analyze a config dir.

    `files`: (name, content) of every entry; non-config names are ignored.
    `ours`: the file names we manage. `versions`: binary name -> VERSION answer,
    or `IGNORE_BINARIES` to judge order and syntax alone. `runtimes`: the rules
    to judge by (None: every rule set, for a runtime not identified).
    """
    entries = dict(files)
    our_names = set(ours)
    judged = tuple(runtimes) if runtimes else ALL_RUNTIMES
    views = {r.label: predict(entries, r, versions, our_names) for r in judged}

    def view_of(kind: str, fallback: RuntimeRules) -> RuntimeView:
        for rules in judged:
            if rules.kind == kind:
                return views[rules.label]
        return predict(entries, fallback, versions, our_names)

    containerd_rules = [r for r in judged if r.kind == "containerd"]
    primary = (containerd_rules or list(judged))[0]
    directory = _Directory(entries, primary.libcni)
    ordered = [directory.load(n) for n in directory.names]
    first_ours = next((p.name for p in ordered if p.name in our_names), None)
    analysis = DirAnalysis(
        containerd=view_of("containerd", DEFAULT_CONTAINERD),
        crio=view_of("crio", DEFAULT_CRIO),
        ours_order=[p.name for p in ordered if p.name in our_names],
        views=views,
    )
    killed_by = {
        views[r.label].file
        for r in containerd_rules
        if not views[r.label].network_ready and views[r.label].network is None
    }
    for loaded in ordered:
        if loaded.name in our_names:
            continue
        parsed = loaded
        if parsed.valid:
            # A file one judged rule set cannot load is invalid for this node.
            for rules in judged:
                other = parse_config(parsed.name, entries[parsed.name], rules.libcni, entries)
                if not other.valid:
                    parsed = other
                    break
        before_ours = first_ours is not None and sort_key(parsed.name) < sort_key(first_ours)
        verdicts: list[Verdict] = []
        details: list[str] = []
        killer = parsed.name in killed_by
        if not parsed.valid:
            verdicts.append(Verdict.INVALID)
            if killer:
                details.append(
                    f"{parsed.error}: containerd fails to load the CNI config and the node "
                    "goes NotReady; CRI-O skips it"
                )
            elif containerd_rules:
                details.append(
                    f"{parsed.error}: containerd stops before it while a valid file sorts "
                    "first; fatal for containerd once that file is removed"
                )
            else:
                details.append(f"{parsed.error}: CRI-O skips it")
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


def effective_network(
    files: Mapping[str, bytes | None],
    runtime: RuntimeRules = DEFAULT_CONTAINERD,
    versions: BinaryVersions | IgnoreBinaries = IGNORE_BINARIES,
) -> str | None:
    """The network `runtime` gives new pods with this directory content. For
    containerd the binaries never change it (a missing binary fails the pods, it
    does not make containerd pick another file); for CRI-O they do."""
    view = predict(files, runtime, versions)
    return view.network if view.network_ready else None


def parse_json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = go_json(data)
    except _GoJSONError:
        return None
    return value if isinstance(value, dict) else None
