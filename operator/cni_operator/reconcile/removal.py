"""Step 2: networks that no longer belong on this node lose our file.

A network goes when its object is deleted (or being deleted) or when it stops
selecting this node. The second case is a switch for the pods attached to it
(their DEL would find no config), so it is gated like any unsafe change; a
deletion is not, because the user asked for the network to end everywhere.
An invalid spec never removes anything: the last good file stays.
What a quarantine moved aside for a removed network goes back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from cni_operator.api import NetworkSpec
from cni_operator.conditions import STATE_BLOCKED, STATE_REMOVED
from cni_operator.node.atomic import remove
from cni_operator.node.attachments import AttachmentScan
from cni_operator.node.manifest import Manifest
from cni_operator.node.quarantine import Quarantine
from cni_operator.reconcile.model import NetworkObject, NodeContext, StepOutput
from cni_operator.switch_gate import decide


def remove_gone(
    ctx: NodeContext,
    objects: Mapping[str, NetworkObject],
    desired: Collection[str],
    manifest: Manifest,
    attachments: AttachmentScan,
) -> StepOutput:
    """Remove our files of networks not in `desired`; entries for those still known."""
    out = StepOutput()
    for name in sorted(set(manifest.networks) - set(desired)):
        obj = objects.get(name)
        if obj is not None and obj.invalid:
            continue  # keep the last good file while the spec is invalid
        managed = manifest.networks[name]
        deleting = obj is None or obj.deleting
        if obj is not None and not obj.deleting:
            # Still exists but no longer selects this node: a switch for its pods.
            cni_name = NetworkSpec.model_validate(managed.spec).cni_name(name)
            count = attachments.count(cni_name)
            decision = decide(
                ["nodeSelector"] if count else [],
                count,
                obj.acknowledged_on(ctx.node_name),
                cni_name,
            )
            if not decision.allowed:
                out.entries[name] = ctx.entry(
                    name,
                    obj.generation,
                    manifest,
                    STATE_BLOCKED,
                    decision.reason,
                    blocked_fields=decision.unsafe_fields,
                    attachments=count,
                )
                continue
        for file in managed.files:
            remove(ctx.paths.conf_dir / file)
        del manifest.networks[name]
        restored = Quarantine(ctx.paths).restore(name, final=deleting)
        message = "removed from this node"
        if restored:
            message += "; restored " + ", ".join(o.entry.original for o in restored if o.restored)
        if obj is not None:
            out.entries[name] = ctx.entry(name, obj.generation, manifest, STATE_REMOVED, message)
    # A network deleted while never applied here may still have quarantined files.
    for entry in Quarantine(ctx.paths).entries():
        if entry.network not in desired and entry.network not in manifest.networks:
            owner = objects.get(entry.network)
            Quarantine(ctx.paths).restore(entry.network, final=owner is None or owner.deleting)
    return out
