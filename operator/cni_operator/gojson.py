"""Reading JSON the way Go's encoding/json fills a struct, as libcni and the
reference plugins (and so containerd and CRI-O) read CNI configs.

Pure. Keys match a field case-insensitively, and when several keys match, the
last one in the document wins (each is decoded in turn into the same field); a
JSON null leaves the field at its zero value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def go_field(obj: Mapping[Any, Any], name: str) -> Any:
    """`obj[name]` as Go reads it into a field called `name`; None when absent or null."""
    found = None
    folded = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == folded:
            found = value
    return found
