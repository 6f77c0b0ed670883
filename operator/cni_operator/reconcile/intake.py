"""Step 1: the snapshot of CNINetwork objects as typed values.

Parsing happens once here, so every later step works on a `NetworkSpec` and a
spec error is reported once (as this node's `Invalid` entry), never half-applied.
Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_operator.api import BinarySourcePolicy, SpecError, parse_spec
from cni_operator.reconcile.model import DesiredNetwork, NetworkObject
from cni_operator.rendering import NodeFacts, selects


@dataclass(frozen=True)
class Intake:
    """Every object of the snapshot, and those that select this node."""

    objects: dict[str, NetworkObject] = field(default_factory=dict)
    desired: dict[str, DesiredNetwork] = field(default_factory=dict)

    def by_file_order(self) -> list[DesiredNetwork]:
        """Lower priority first, as the runtimes read the files (ties by name)."""
        return sorted(self.desired.values(), key=lambda d: (d.spec.priority, d.name))


def _object(name: str, body: Mapping[str, Any], policy: BinarySourcePolicy) -> NetworkObject:
    meta = body.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    annotations = dict(meta.get("annotations") or {})
    if meta.get("deletionTimestamp"):
        return NetworkObject(name, generation, annotations, deleting=True)
    try:
        spec = parse_spec(dict(body.get("spec") or {}))
    except SpecError as error:
        return NetworkObject(name, generation, annotations, False, spec_error=str(error))
    refusals = policy.refusals(spec)
    if refusals:
        return NetworkObject(name, generation, annotations, False, spec_error="; ".join(refusals))
    return NetworkObject(name, generation, annotations, False, spec=spec)


def read_networks(
    networks: Mapping[str, Mapping[str, Any]],
    facts: NodeFacts | None,
    policy: BinarySourcePolicy,
) -> Intake:
    """Type the snapshot. Without the node's labels (`facts` None) nothing is desired.
    A spec whose binary sources the policy refuses is invalid like any other."""
    intake = Intake()
    for name, body in sorted(networks.items()):
        obj = intake.objects[name] = _object(name, body, policy)
        spec = obj.spec
        if spec is not None and facts is not None and selects(spec.nodeSelector, facts.labels):
            intake.desired[name] = DesiredNetwork(obj, spec)
    return intake
