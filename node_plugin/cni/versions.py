"""CNI spec versions: which we speak, how they compare, which one a config asks for.

Pure and cheap to import: VERSION must answer without loading anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from node_plugin.cni.errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, CniError

CURRENT = "1.1.0"
SUPPORTED: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_WHEN_MISSING = "0.1.0"  # SPEC: a config without cniVersion is 0.1.0

# Verbs that only exist from a given spec version on.
MINIMUM_FOR_VERB: dict[str, str] = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

_SEMVER = re.compile(r"([0-9]+)\.([0-9]+)\.([0-9]+)")  # fullmatch: no trailing newline


def parse(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); anything else is a decode failure (code 6)."""
    match = _SEMVER.fullmatch(version)
    if not match:
        raise CniError(DECODE_FAILURE, f"unparsable cniVersion {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def effective_version(config: Mapping[str, object]) -> str:
    """The version results are written in.

    `cniVersion` alone: it must be one we support. With `cniVersions` (CNI 1.1.0
    conflists) the highest supported version of the union of both wins, as libcni
    does; if none of them is supported the call fails with code 1.
    """
    raw = config.get("cniVersion", DEFAULT_WHEN_MISSING)
    if raw in ("", None):
        raw = DEFAULT_WHEN_MISSING
    if not isinstance(raw, str):
        raise CniError(DECODE_FAILURE, "cniVersion must be a string", f"got {raw!r}")
    parse(raw)
    candidates = [raw]
    listed = config.get("cniVersions")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise CniError(DECODE_FAILURE, "cniVersions must be a list of strings")
        for v in listed:
            parse(v)
        candidates = [v for v in listed if isinstance(v, str)] + (
            [raw] if "cniVersion" in config else []
        )
    usable = [v for v in candidates if v in SUPPORTED]
    if not usable:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {', '.join(repr(v) for v in candidates)}, "
            f"plugin supports {list(SUPPORTED)}",
        )
    return max(usable, key=parse)


def check_verb_allowed(verb: str, version: str) -> None:
    minimum = MINIMUM_FOR_VERB.get(verb)
    if minimum and not at_least(version, minimum):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"config version does not allow {verb}",
            f"{verb} needs cniVersion {minimum} or later, config is {version}",
        )


def version_info() -> dict[str, object]:
    return {"cniVersion": CURRENT, "supportedVersions": list(SUPPORTED)}
