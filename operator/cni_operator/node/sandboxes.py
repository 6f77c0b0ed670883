"""What the runtime said about its live pod sandboxes (CRI `ListPodSandbox`).

Asked by `node/cri.py`'s RuntimeProbe (the one CRI client, deadlines on every
call); this module only names the answer and who can give it, so the pool code
needs no gRPC. A runtime that cannot be asked gives `ids=None`, never an empty
set: "unknown" must never read as "every sandbox is gone", or leak repair would
release live pods' addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SandboxListing:
    """What the runtime said: live sandbox ids, or why it could not be asked."""

    ids: frozenset[str] | None
    endpoint: str | None
    error: str | None = None


class SandboxSource(Protocol):
    """Whoever can list the runtime's sandboxes (node/cri.RuntimeProbe)."""

    def list_sandboxes(self) -> SandboxListing: ...
