"""Identifiers in a CNINetwork spec are matched in full: `$` in a regex also accepts a
trailing newline, and a plugin type `bridge\\n` would name a different binary."""

from __future__ import annotations

from typing import Any

import pytest
from cni_operator.api import SpecError, parse_spec


def spec(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "priority": 10,
        "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}],
    }
    body.update(overrides)
    return body


def test_a_canonical_spec_parses() -> None:
    parse_spec(spec(binaries=[{"name": "b", "sha256": "a" * 64, "source": {"file": "/b"}}]))


@pytest.mark.parametrize(
    "bad",
    [
        spec(plugins=[{"type": "bridge\n"}]),
        spec(plugins=[{"type": "bridge", "ipam": {"type": "host-local\n"}}]),
        spec(binaries=[{"name": "b\n", "sha256": "a" * 64, "source": {"file": "/b"}}]),
        spec(binaries=[{"name": "b", "sha256": "a" * 64 + "\n", "source": {"file": "/b"}}]),
    ],
    ids=["plugin-type", "ipam-type", "binary-name", "sha256"],
)
def test_a_trailing_newline_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        parse_spec(bad)
