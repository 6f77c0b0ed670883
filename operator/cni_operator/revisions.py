"""CNINetwork spec revisions, kept in its status as a Deployment keeps ReplicaSets.

Pure. A revision is recorded when a generation is Ready on every selected node (a
spec known to work), numbered up from 1, pruned to the newest `limit`. A spec equal
to the newest revision's (e.g. after a rollback to it) adds none. `cniwarden
rollback` writes a revision's spec back as the new spec, so it reaches the nodes
through the same validation and switch gate as any edit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

REVISION_LIMIT = 10


def spec_digest(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def with_revision(
    previous: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    spec: Mapping[str, Any],
    ready: bool,
    now: str,
    limit: int = REVISION_LIMIT,
) -> list[dict[str, Any]]:
    revisions = [dict(r) for r in previous if isinstance(r, Mapping)]
    if not ready:
        return revisions
    digest = spec_digest(spec)
    if revisions and revisions[-1].get("sha256") == digest:
        revisions[-1]["generation"] = generation
        return revisions
    number = max((int(r.get("revision") or 0) for r in revisions), default=0) + 1
    revisions.append(
        {
            "revision": number,
            "generation": generation,
            "sha256": digest,
            "time": now,
            "spec": dict(spec),
        }
    )
    return revisions[-limit:]


class RollbackError(ValueError):
    """No revision to roll back to; the message says which exist."""


def rollback_target(
    revisions: Sequence[Mapping[str, Any]], current_spec: Mapping[str, Any], to: int | None
) -> dict[str, Any]:
    """The revision to restore: `to`, or the newest whose spec differs from the current."""
    known = ", ".join(str(r.get("revision")) for r in revisions) or "none"
    if to is not None:
        for revision in revisions:
            if revision.get("revision") == to:
                return dict(revision)
        raise RollbackError(f"no revision {to}; kept revisions: {known}")
    digest = spec_digest(current_spec)
    for revision in reversed(revisions):
        if revision.get("sha256") != digest:
            return dict(revision)
    raise RollbackError(f"no earlier revision differs from the current spec; kept: {known}")
