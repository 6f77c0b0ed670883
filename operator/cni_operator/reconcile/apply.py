"""Step 3: one selected network onto this node: render, binaries, check, gate, write.

Each stage can only stop the ones after it, so a failure leaves the last good
file in place: a spec that does not render, a binary that cannot be installed,
a bin dir that cannot run the config (missing type, VERSION without the
config's version), or a change the gate holds. The manifest records the new
file before it is written, so a crash in between leaves our file known.
"""

from __future__ import annotations

from dataclasses import dataclass

from cni_operator.api import NetworkSpec, SpecError
from cni_operator.conditions import STATE_APPLIED, STATE_BLOCKED, STATE_INVALID
from cni_operator.node import binaries
from cni_operator.node import manifest as manifest_io
from cni_operator.node.atomic import atomic_write, remove, sha256_bytes
from cni_operator.node.attachments import AttachmentScan
from cni_operator.node.fetch import FetchLimits
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.scan import read_config_dir, referenced_binaries
from cni_operator.problems import ERROR, Problem
from cni_operator.reconcile.gate import GateInput, judge
from cni_operator.reconcile.install import OwnBinaries, install_binaries
from cni_operator.reconcile.model import DesiredNetwork, NetworkEntry, NodeContext
from cni_operator.rendering import NodeFacts, check_against_binaries, render
from cni_operator.runtime_order import ALL_RUNTIMES


@dataclass(frozen=True)
class ApplyOutcome:
    entry: NetworkEntry
    problem: Problem | None = None


def apply_network(
    ctx: NodeContext,
    network: DesiredNetwork,
    *,
    facts: NodeFacts,
    manifest: Manifest,
    attachments: AttachmentScan,
    own: OwnBinaries,
    prober: binaries.VersionProber,
    limits: FetchLimits,
) -> ApplyOutcome:
    """Write `network`'s file, or say why the last good one stays."""
    name, spec, generation = network.name, network.spec, network.generation
    paths = ctx.paths
    try:
        rendered = render(name, spec, facts)
    except SpecError as error:
        return ApplyOutcome(ctx.entry(name, generation, manifest, STATE_INVALID, str(error)))
    installed = install_binaries(
        paths, manifest, spec, rendered.plugin_types, own=own, limits=limits
    )
    issues = list(installed.problems)
    versions = prober.bin_dir_versions(paths.bin_dir, rendered.plugin_types)
    issues += check_against_binaries(rendered, versions)
    if issues:
        message = "not written, the last good config stays: " + "; ".join(issues)
        return ApplyOutcome(
            ctx.entry(name, generation, manifest, STATE_INVALID, message),
            Problem(
                "NetworkNotApplicable",
                ERROR,
                f"network {name}: {'; '.join(issues)}",
                f"Install the missing plugin binaries into {paths.bin_dir} or declare "
                "them under spec.binaries; set cniVersion to one every plugin lists.",
            ),
        )

    managed = manifest.networks.get(name)
    digest = sha256_bytes(rendered.content)
    conf_files = read_config_dir(paths.conf_dir)
    # The real bin dir, not an empty map: CRI-O's network depends on the binaries.
    all_versions = prober.bin_dir_versions(
        paths.bin_dir, referenced_binaries(conf_files) | set(rendered.plugin_types)
    )
    verdict = judge(
        GateInput(
            name=name,
            spec=spec,
            generation=generation,
            acknowledged=network.object.acknowledged_on(ctx.node_name),
            applied=managed,
            rendered=rendered,
            digest=digest,
            conf_files=conf_files,
            attachments=attachments,
            versions=all_versions,
            runtimes=ctx.runtimes or ALL_RUNTIMES,
        )
    )
    decision = verdict.decision
    if not decision.allowed:
        if managed is not None and not (paths.conf_dir / managed.file).exists():
            # Keep the last applied config in place even if someone removed it.
            old = render(name, NetworkSpec.model_validate(managed.spec), facts)
            atomic_write(paths.conf_dir / managed.file, old.content)
        return ApplyOutcome(
            ctx.entry(
                name,
                generation,
                manifest,
                STATE_BLOCKED,
                decision.reason,
                blocked_fields=decision.unsafe_fields,
                attachments=verdict.held_count,
            )
        )

    target = paths.conf_dir / rendered.file_name
    previous = [] if managed is None else [f for f in managed.files if f != rendered.file_name]
    applied = ManagedNetwork(
        rendered.file_name,
        digest,
        generation,
        spec.model_dump(mode="json", exclude_none=True),
        old_files=previous,
    )
    manifest.networks[name] = applied
    manifest_io.save(paths, manifest)  # intent first: a crash leaves our files known
    current = target.read_bytes() if target.is_file() else None
    if current != rendered.content:
        atomic_write(target, rendered.content)
    for old_file in previous:
        remove(paths.conf_dir / old_file)
    applied.old_files = []  # saved with the manifest at the end of the pass
    return ApplyOutcome(
        ctx.entry(
            name,
            generation,
            manifest,
            STATE_APPLIED,
            decision.reason if verdict.held_fields else f"generation {generation} applied",
            attachments=attachments.count(spec.cni_name(name)),
        )
    )
