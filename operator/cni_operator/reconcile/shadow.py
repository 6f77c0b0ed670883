"""Step 4: the shadow guard. Foreign files that win over ours are moved aside when
the network of ours that should win asks for it (`shadowPolicy: Quarantine`),
and put back exactly when no network asks any more.

A file is moved only when it has settled (it may still be being written) and
when no pod is attached to the network it defines (moving it would strand
them); otherwise the pass says when to look again, or reports why it waits.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

from cni_operator.kube_time import now_iso
from cni_operator.node.attachments import AttachmentScan
from cni_operator.node.manifest import Manifest
from cni_operator.node.quarantine import Quarantine, QuarantineError
from cni_operator.node.scan import read_config_dir
from cni_operator.problems import ERROR, WARNING, Problem
from cni_operator.reconcile.model import AgentEvent, NodeContext, StepOutput
from cni_operator.runtime_order import IGNORE_BINARIES, analyze, parse_config

# A foreign file younger than this is not moved yet: it may still be being written.
QUARANTINE_SETTLE_SECONDS = 0.5


@dataclass
class ShadowOutcome(StepOutput):
    recheck_in: float | None = field(default=None)  # look again after this many seconds


def _restore_unwanted(ctx: NodeContext, wants: Collection[str], out: ShadowOutcome) -> None:
    quarantine = Quarantine(ctx.paths)
    for entry in quarantine.entries():
        if entry.network in wants:
            continue
        for outcome in quarantine.restore(entry.network):
            if outcome.restored:
                out.events.append(
                    AgentEvent(
                        entry.network,
                        "Normal",
                        "Restored",
                        f"node {ctx.node_name}: restored {outcome.entry.original}",
                    )
                )


def guard_shadows(
    ctx: NodeContext, wants: Collection[str], manifest: Manifest, attachments: AttachmentScan
) -> ShadowOutcome:
    """`wants`: the networks on this node whose policy is Quarantine."""
    out = ShadowOutcome()
    _restore_unwanted(ctx, wants, out)
    files = read_config_dir(ctx.paths.conf_dir)
    # Who sorts first is a question of names and syntax, not of the bin dir.
    analysis = analyze(files.items(), manifest.config_files & set(files), IGNORE_BINARIES)
    if not analysis.ours_order:
        return out
    first = analysis.ours_order[0]
    owner = next((n for n, m in manifest.networks.items() if m.file == first), None)
    if owner is None or owner not in wants:
        return out
    quarantine = Quarantine(ctx.paths)
    for file_name in analysis.shadowing_files:
        path = ctx.paths.conf_dir / file_name
        try:
            age = time.time() - path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if age < QUARANTINE_SETTLE_SECONDS:
            # Perhaps still being written (create, then write): look again soon
            # rather than move half a file.
            out.recheck_in = min(out.recheck_in or 1e9, QUARANTINE_SETTLE_SECONDS - age)
            continue
        foreign_net = parse_config(file_name, files.get(file_name)).network
        count = attachments.count(foreign_net) if foreign_net else 0
        if count:
            out.problems.append(
                Problem(
                    "QuarantineHeld",
                    WARNING,
                    f"{path} wins over ours but network {foreign_net} has {count} live "
                    "attachment(s); not moved",
                    "Drain the node (or delete those pods), then the agent quarantines it.",
                    str(path),
                )
            )
            continue
        try:
            entry = quarantine.quarantine(path, owner)
        except FileNotFoundError:
            continue  # gone meanwhile: nothing to move
        except (OSError, QuarantineError) as error:
            out.problems.append(
                Problem(
                    "QuarantineFailed",
                    ERROR,
                    f"{path} wins over ours but was not moved aside: {error}",
                    "It stays where it is and the agent tries again on its next pass; "
                    "fix what the message names (e.g. free space where the journal lives).",
                    str(path),
                )
            )
            continue
        out.events.append(
            AgentEvent(
                owner,
                "Normal",
                "Quarantined",
                f"node {ctx.node_name}: moved {entry.original} to {entry.stored} "
                f"(sha256 {entry.sha256[:12]}...) at {now_iso()}",
            )
        )
    return out
