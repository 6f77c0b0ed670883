"""The pass itself: the steps of this package in order (see its docstring for why
that order). What lives across passes lives here: our own binaries (read once),
the last state of each network (for transition Events) and the VERSION cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from cni_operator.api import BinarySourcePolicy
from cni_operator.conditions import STATE_INVALID
from cni_operator.node import binaries
from cni_operator.node import manifest as manifest_io
from cni_operator.node.atomic import sweep_temp_files
from cni_operator.node.attachments import AttachmentScan, scan_attachments
from cni_operator.node.fetch import FetchLimits
from cni_operator.node.manifest import Manifest
from cni_operator.node.own_binaries import OwnBinarySource
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine, QuarantineError
from cni_operator.problems import ERROR, Problem
from cni_operator.reconcile.apply import apply_network
from cni_operator.reconcile.cleanup import remove_unused_binaries
from cni_operator.reconcile.install import OwnBinaries
from cni_operator.reconcile.intake import read_networks
from cni_operator.reconcile.model import (
    AgentEvent,
    DesiredNetwork,
    NodeContext,
    PassResult,
    StepOutput,
)
from cni_operator.reconcile.removal import remove_gone
from cni_operator.reconcile.report import TransitionEvents, build_status, write_failure
from cni_operator.reconcile.shadow import guard_shadows
from cni_operator.rendering import NodeFacts
from cni_operator.runtime_order import RuntimeRules

log = logging.getLogger("cniwarden.agent")
QUARANTINE = "Quarantine"


def extra_lease_stores(paths: HostPaths, manifest: Manifest) -> list[Path]:
    """host-local stores named by `ipam.dataDir` in the configs we applied."""
    stores = []
    for managed in manifest.networks.values():
        for plugin in managed.spec.get("plugins") or []:
            data_dir = ((plugin or {}).get("ipam") or {}).get("dataDir")
            if isinstance(data_dir, str) and data_dir.startswith("/") and ".." not in data_dir:
                stores.append(paths.root / data_dir.lstrip("/"))  # never outside the root
    return stores


class Reconciler:
    def __init__(
        self,
        paths: HostPaths,
        node_name: str,
        own_source: OwnBinarySource,
        prober: binaries.VersionProber | None = None,
        *,
        sources: BinarySourcePolicy | None = None,
        fetch_limits: FetchLimits | None = None,
    ) -> None:
        self.paths = paths
        self.sources = sources or BinarySourcePolicy()
        self.fetch_limits = fetch_limits or FetchLimits()
        self.node_name = node_name
        self.own_source = own_source
        self.prober = prober or binaries.VersionProber()
        self._ctx = NodeContext(paths, node_name)
        # Set by the agent from the runtime's CRI Version before each pass.
        self.runtimes: tuple[RuntimeRules, ...] | None = None
        self._own: OwnBinaries | None = None
        self._transitions = TransitionEvents(node_name)
        self._swept = False

    def own_binaries(self) -> OwnBinaries:
        if self._own is None:
            self._own = OwnBinaries(self.own_source.label, self.own_source.binaries())
        return self._own

    def reconcile(
        self,
        networks: Mapping[str, Mapping[str, Any]] | None,
        node: Mapping[str, Any] | None,
    ) -> PassResult:
        """One pass. `networks` is None until the agent has listed them once; `node`
        is None until it has seen its Node: either way the pass only reports.
        A write that fails (a full disk) becomes a problem in the report, never an
        exception: the files it did not write keep their last good content."""
        ctx = self._ctx = replace(self._ctx, runtimes=self.runtimes)
        output = StepOutput()
        try:
            self.paths.ensure()
            manifest = manifest_io.load(self.paths)
        except (OSError, manifest_io.ManifestError) as error:
            return self._unknown_manifest(error)
        if not self._swept:
            for directory in (self.paths.conf_dir, self.paths.bin_dir, self.paths.state_dir):
                for path in sweep_temp_files(directory):
                    log.info("removed %s, left by a writer that was killed", path)
            self._swept = True
        facts = NodeFacts.from_node(node) if node is not None else None
        attachments = scan_attachments(self.paths, extra_lease_stores(self.paths, manifest))
        intake = read_networks(networks or {}, facts, self.sources)
        for obj in intake.objects.values():
            if obj.invalid:
                message = str(obj.spec_error)
                output.entries[obj.name] = ctx.entry(
                    obj.name, obj.generation, manifest, STATE_INVALID, message
                )
        if facts is None or networks is None:
            # Without this node's labels, or before the first full list of networks,
            # absence proves nothing: change no file, just report what is there.
            return self._result(manifest, output, None)
        recheck_in = None
        try:
            Quarantine(self.paths).recover()
            output.merge(remove_gone(ctx, intake.objects, intake.desired, manifest, attachments))
            for network in intake.by_file_order():
                self._apply(network, facts, manifest, attachments, output)
            wants = {d.name for d in intake.desired.values() if d.spec.shadowPolicy == QUARANTINE}
            shadow = guard_shadows(ctx, wants, manifest, attachments, time.time())
            output.merge(shadow)
            recheck_in = shadow.recheck_in
            declared = {b.name for d in intake.desired.values() for b in d.spec.binaries}
            remove_unused_binaries(self.paths, manifest, declared)
            manifest_io.save(self.paths, manifest)
        except (OSError, QuarantineError) as error:
            output.problems.append(write_failure(error))
            manifest = self._reload(manifest)
        return self._result(manifest, output, recheck_in)

    def _apply(
        self,
        network: DesiredNetwork,
        facts: NodeFacts,
        manifest: Manifest,
        attachments: AttachmentScan,
        output: StepOutput,
    ) -> None:
        try:
            applied = apply_network(
                self._ctx,
                network,
                facts=facts,
                manifest=manifest,
                attachments=attachments,
                own=self.own_binaries(),
                prober=self.prober,
                limits=self.fetch_limits,
            )
        except OSError as error:
            problem = write_failure(error)
            message = f"not written, the last good config stays: {problem.message}"
            output.entries[network.name] = self._ctx.entry(
                network.name, network.generation, manifest, STATE_INVALID, message
            )
            output.problems.append(problem)
            return
        output.entries[network.name] = applied.entry
        if applied.problem is not None:
            output.problems.append(applied.problem)

    def node_problem_events(self, problems: list[dict[str, Any]]) -> list[AgentEvent]:
        """Events for node problems found outside a pass (the agent's own failures)."""
        return self._transitions.problem_events(problems)

    def _reload(self, fallback: Manifest) -> Manifest:
        """What is on disk after an aborted pass (the report must not claim more)."""
        try:
            return manifest_io.load(self.paths)
        except (OSError, manifest_io.ManifestError):
            return fallback

    def _unknown_manifest(self, error: Exception) -> PassResult:
        """Which files are ours is unknown: touch nothing, say why, and let the agent
        keep what it last knew was applied (host-gw routes)."""
        output = StepOutput()
        output.problems.append(
            Problem(
                "ManifestUnreadable",
                ERROR,
                f"{error}; the agent changes no file until it can tell which are its own",
                f"Repair {self.paths.host_view(self.paths.manifest)} (a copy of every config "
                "it names is in net.d), or move it aside: the agent then takes every file for "
                "foreign and writes its configs again.",
                self.paths.host_view(self.paths.manifest),
            )
        )
        status = build_status(self._ctx, Manifest(), output, self.prober)
        events = self._transitions.problem_events(status["problems"])
        return PassResult(status, events, None, None)

    def _result(
        self, manifest: Manifest, output: StepOutput, recheck_in: float | None
    ) -> PassResult:
        status = build_status(self._ctx, manifest, output, self.prober)
        events = [
            *output.events,
            *self._transitions.events(output.entries),
            *self._transitions.problem_events(status["problems"]),
        ]
        applied = {name: managed.spec for name, managed in manifest.networks.items()}
        return PassResult(status, events, recheck_in, applied)
