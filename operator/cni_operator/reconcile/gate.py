"""Step 3c: may this rendered config be written now? The switch gate of one network.

Two things can strand the pods attached on this node: an unsafe change of the
network they use (`switch_gate.classify`), and a file that would make the
runtime give new pods another network than the one attached pods use (a
takeover: a new or raised network sorting first). Either is held while pods are
attached, unless this generation is acknowledged for this node.

Pure: the caller reads the config dir and the attachments and passes them in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cni_operator.api import NetworkSpec
from cni_operator.node.attachments import AttachmentScan
from cni_operator.node.manifest import ManagedNetwork
from cni_operator.rendering import RenderedConfig
from cni_operator.runtime_order import (
    ALL_RUNTIMES,
    IGNORE_BINARIES,
    BinaryVersions,
    IgnoreBinaries,
    RuntimeRules,
    effective_network,
)
from cni_operator.switch_gate import GateDecision, classify, decide


@dataclass(frozen=True)
class GateInput:
    """One network about to be written, and what is on the node now."""

    name: str
    spec: NetworkSpec
    generation: int
    acknowledged: bool
    applied: ManagedNetwork | None  # what the manifest says we wrote last
    rendered: RenderedConfig
    digest: str  # sha256 of rendered.content
    conf_files: Mapping[str, bytes | None]  # the config dir as it is now
    attachments: AttachmentScan
    # The bin dir's VERSION answers for every type conf_files and rendered name:
    # CRI-O's choice of network depends on them.
    versions: BinaryVersions | IgnoreBinaries = IGNORE_BINARIES
    runtimes: Sequence[RuntimeRules] = ALL_RUNTIMES  # the node's runtime, else every rule set


@dataclass(frozen=True)
class GateVerdict:
    decision: GateDecision
    held_fields: tuple[str, ...]  # what would be held without an acknowledgement
    held_count: int  # the attachments that hold it


@dataclass(frozen=True)
class Takeover:
    """New pods would get `after` instead of `before`, which `attached` pods use."""

    before: str
    after: str | None
    attached: int

    @property
    def held_field(self) -> str:
        return f"priority (new pods would move from network {self.before} to {self.after})"


def takeover(
    conf_files: Mapping[str, bytes | None],
    applied: ManagedNetwork | None,
    rendered: RenderedConfig,
    attachments: AttachmentScan,
    *,
    versions: BinaryVersions | IgnoreBinaries = IGNORE_BINARIES,
    runtimes: Sequence[RuntimeRules] = ALL_RUNTIMES,
) -> Takeover | None:
    """Would writing this file change the network new pods get while pods are
    attached to the current one?"""
    after = dict(conf_files)
    for file in [] if applied is None else applied.files:
        after.pop(file, None)
    after[rendered.file_name] = rendered.content
    for runtime in runtimes:
        before_net = effective_network(conf_files, runtime, versions)
        after_net = effective_network(after, runtime, versions)
        if before_net is None or before_net == after_net:
            continue
        count = attachments.count(before_net)
        if count:
            return Takeover(before_net, after_net, count)
    return None


def judge(gate: GateInput) -> GateVerdict:
    """Apply, or hold the last applied config on this node."""
    held_fields: list[str] = []
    held_count = 0
    applied = gate.applied
    if applied is not None and (
        applied.generation != gate.generation or applied.sha256 != gate.digest
    ):
        old_spec = NetworkSpec.model_validate(applied.spec)
        change = classify(old_spec, gate.spec)
        count = gate.attachments.count(old_spec.cni_name(gate.name))
        if change.unsafe and count:
            held_fields += change.unsafe
            held_count += count
    moved = takeover(
        gate.conf_files,
        applied,
        gate.rendered,
        gate.attachments,
        versions=gate.versions,
        runtimes=gate.runtimes,
    )
    if moved is not None:
        held_fields.append(moved.held_field)
        held_count += moved.attached
    decision = decide(held_fields, held_count, gate.acknowledged, gate.spec.cni_name(gate.name))
    return GateVerdict(decision, tuple(held_fields), held_count)
