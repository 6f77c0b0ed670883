"""CNI_ARGS: `K=V;K=V` pairs, strict about unknown keys unless `IgnoreUnknown` is true.

Pure. Keys are case-sensitive, as in the reference (Go matches them to struct
field names); runtimes always send `IgnoreUnknown=1` next to their K8S_* keys.
"""

from __future__ import annotations

from collections.abc import Iterable

from node_plugin.cni.errors import INVALID_ENV, CniError

_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
_FALSE = {"0", "f", "F", "false", "FALSE", "False"}


def parse(raw: str, known: Iterable[str]) -> dict[str, str]:
    """Return the known keys' values; reject malformed pairs and unknown keys (code 4)."""
    if not raw:
        return {}
    pairs: list[tuple[str, str]] = []
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: invalid pair {item!r} (want KEY=VALUE)")
        pairs.append((key, value))
    ignore_unknown = False
    for key, value in pairs:
        if key == "IgnoreUnknown":
            if value in _TRUE:
                ignore_unknown = True
            elif value not in _FALSE:
                raise CniError(INVALID_ENV, f"CNI_ARGS: IgnoreUnknown={value!r} is not a boolean")
    wanted = set(known)
    out: dict[str, str] = {}
    for key, value in pairs:
        if key == "IgnoreUnknown":
            continue
        if key in wanted:
            out[key] = value
        elif not ignore_unknown:
            raise CniError(
                INVALID_ENV,
                f"CNI_ARGS: unknown key {key!r}",
                f"known keys: {sorted(wanted | {'IgnoreUnknown'})}; add IgnoreUnknown=1 to ignore",
            )
    return out
