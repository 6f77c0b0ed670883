"""One pass of the node agent: make this node's files match the CNINetworks.

Blocking file I/O and subprocesses (VERSION probes), no kopf and no API calls:
the agent runs it in a thread with a snapshot of the CNINetwork objects and its
Node, and publishes the returned report. Order of work per pass:

1. networks gone (deleted, or no longer selecting this node): remove our file,
   restore what their quarantine moved aside (removal while pods are attached
   on a node that merely stopped being selected is gated like any switch);
2. per selected network, by file order: render, install binaries (ours and
   declared), validate against the bin dir (every type present, VERSION lists
   the config's version), gate unsafe changes on live attachments, then write
   atomically; an invalid or held network keeps its last good file;
3. shadow guard: quarantine foreign files that win over ours when the winning
   network of ours asks for it, restore when nothing asks any more;
4. remove binaries we own that no file of ours names; scan and report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_operator.api import NetworkSpec, SpecError, parse_spec
from cni_operator.conditions import STATE_APPLIED, STATE_BLOCKED, STATE_INVALID, STATE_REMOVED
from cni_operator.kube_time import now_iso
from cni_operator.node import binaries
from cni_operator.node import manifest as manifest_io
from cni_operator.node.atomic import atomic_write, remove, sha256_bytes
from cni_operator.node.attachments import AttachmentScan, scan_attachments
from cni_operator.node.manifest import ManagedNetwork, Manifest
from cni_operator.node.own_binaries import OwnBinarySource
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine
from cni_operator.node.scan import ERROR, WARNING, Problem, read_config_dir, report_dict, scan_node
from cni_operator.rendering import (
    NodeFacts,
    RenderedConfig,
    check_against_binaries,
    render,
    selects,
)
from cni_operator.runtime_order import analyze, parse_config
from cni_operator.switch_gate import GateDecision, acknowledged, classify, decide

# A foreign file younger than this is not moved yet: it may still be being written.
QUARANTINE_SETTLE_SECONDS = 0.5


@dataclass(frozen=True)
class AgentEvent:
    network: str
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class PassResult:
    status: dict[str, Any]
    events: list[AgentEvent] = field(default_factory=list)
    recheck_in: float | None = None  # run another pass after this many seconds
    # The specs of the networks whose files are on this node after the pass.
    applied_specs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def _generation(body: Mapping[str, Any]) -> int:
    return int(_meta(body).get("generation") or 0)


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return _meta(body).get("annotations") or {}


class Reconciler:
    def __init__(
        self,
        paths: HostPaths,
        node_name: str,
        own_source: OwnBinarySource,
        prober: binaries.VersionProber | None = None,
    ) -> None:
        self.paths = paths
        self.node_name = node_name
        self.own_source = own_source
        self.prober = prober or binaries.VersionProber()
        self._own_cache: Mapping[str, bytes] | None = None
        self._last_states: dict[str, tuple[str, str]] = {}
        self.recheck_in: float | None = None

    def own_binaries(self) -> Mapping[str, bytes]:
        if self._own_cache is None:
            self._own_cache = self.own_source.binaries()
        return self._own_cache

    # ------------------------------------------------------------------ pass
    def reconcile(
        self,
        networks: Mapping[str, Mapping[str, Any]] | None,
        node: Mapping[str, Any] | None,
    ) -> PassResult:
        """One pass. `networks` is None until the agent has listed them once; `node`
        is None until it has seen its Node: either way the pass only reports."""
        self.paths.ensure()
        self.recheck_in = None
        manifest = manifest_io.load(self.paths)
        facts = NodeFacts.from_node(node) if node is not None else None
        attachments = scan_attachments(self.paths, self._extra_lease_stores(manifest))
        entries: dict[str, dict[str, Any]] = {}
        problems: list[Problem] = []
        events: list[AgentEvent] = []

        desired: dict[str, tuple[Mapping[str, Any], NetworkSpec]] = {}
        invalid_specs: set[str] = set()
        for name, body in sorted((networks or {}).items()):
            if _meta(body).get("deletionTimestamp"):
                continue
            try:
                spec = parse_spec(dict(body.get("spec") or {}))
            except SpecError as error:
                invalid_specs.add(name)
                entries[name] = self._entry(name, body, manifest, STATE_INVALID, str(error))
                continue
            if facts is not None and selects(spec.nodeSelector, facts.labels):
                desired[name] = (body, spec)

        if facts is None or networks is None:
            # Without this node's labels, or before the first full list of networks,
            # absence proves nothing: change no file, just report what is there.
            return self._report(manifest, entries, problems, events)
        self._remove_gone(
            networks=networks,
            desired=desired,
            invalid_specs=invalid_specs,
            manifest=manifest,
            attachments=attachments,
            entries=entries,
        )
        for name, (body, spec) in sorted(
            desired.items(), key=lambda item: (item[1][1].priority, item[0])
        ):
            assert facts is not None
            self._apply(
                name=name,
                body=body,
                spec=spec,
                facts=facts,
                manifest=manifest,
                attachments=attachments,
                entries=entries,
                problems=problems,
            )
        self._shadow_guard(desired, manifest, attachments, problems, events)
        self._cleanup_binaries(desired, manifest)
        manifest_io.save(self.paths, manifest)
        return self._report(manifest, entries, problems, events)

    def _report(
        self,
        manifest: Manifest,
        entries: dict[str, dict[str, Any]],
        problems: list[Problem],
        events: list[AgentEvent],
    ) -> PassResult:
        scan = scan_node(self.paths, manifest, self.prober, node_view=True)
        status = report_dict(scan, manifest)
        status["problems"] = [p.to_dict() for p in problems] + status["problems"]
        status["networks"] = [entries[name] for name in sorted(entries)]
        status["nodeName"] = self.node_name
        status["hostRoot"] = str(self.paths.root)
        status["healthy"] = not scan.broken
        status["problemCount"] = len(status["problems"])
        events.extend(self._transition_events(entries))
        applied = {name: managed.spec for name, managed in manifest.networks.items()}
        return PassResult(status, events, self.recheck_in, applied)

    def _extra_lease_stores(self, manifest: Manifest) -> list[Path]:
        """host-local stores named by `ipam.dataDir` in the configs we applied."""
        stores = []
        for managed in manifest.networks.values():
            for plugin in managed.spec.get("plugins") or []:
                data_dir = ((plugin or {}).get("ipam") or {}).get("dataDir")
                if isinstance(data_dir, str) and data_dir.startswith("/"):
                    stores.append(self.paths.root / data_dir.lstrip("/"))
        return stores

    # ------------------------------------------------------------- entries
    def _entry(
        self,
        name: str,
        body: Mapping[str, Any] | None,
        manifest: Manifest,
        state: str,
        message: str,
        **extra: Any,
    ) -> dict[str, Any]:
        managed = manifest.networks.get(name)
        entry: dict[str, Any] = {"name": name, "state": state, "message": message}
        if body is not None:
            entry["desiredGeneration"] = _generation(body)
        if managed is not None:
            entry["appliedGeneration"] = managed.generation
            entry["file"] = self.paths.host_view(self.paths.conf_dir / managed.file)
        entry.update(extra)
        return entry

    def _blocked_entry(
        self,
        name: str,
        body: Mapping[str, Any] | None,
        manifest: Manifest,
        decision: GateDecision,
        attachments: int,
    ) -> dict[str, Any]:
        """A change held by the switch gate: which fields, and how many attachments hold it."""
        return self._entry(
            name,
            body,
            manifest,
            STATE_BLOCKED,
            decision.reason,
            blockedFields=list(decision.unsafe_fields),
            attachments=attachments,
        )

    def _transition_events(self, entries: Mapping[str, Mapping[str, Any]]) -> list[AgentEvent]:
        """One Event per change of a network's state or message on this node."""
        events = []
        for name, entry in entries.items():
            key = (str(entry["state"]), str(entry.get("message", "")))
            if self._last_states.get(name) == key:
                continue
            self._last_states[name] = key
            state = entry["state"]
            where = f"node {self.node_name}: "
            if state == STATE_INVALID:
                events.append(AgentEvent(name, "Warning", "InvalidConfig", where + key[1]))
            elif state == STATE_BLOCKED:
                events.append(AgentEvent(name, "Warning", "SwitchBlocked", where + key[1]))
            elif state == STATE_APPLIED:
                events.append(AgentEvent(name, "Normal", "Applied", where + key[1]))
        return events

    # ------------------------------------------------------------- removal
    def _remove_gone(
        self,
        *,
        networks: Mapping[str, Mapping[str, Any]],
        desired: Mapping[str, Any],
        invalid_specs: set[str],
        manifest: Manifest,
        attachments: AttachmentScan,
        entries: dict[str, dict[str, Any]],
    ) -> None:
        for name in sorted(set(manifest.networks) - set(desired)):
            body = networks.get(name)
            if name in invalid_specs:
                continue  # keep the last good file while the spec is invalid
            managed = manifest.networks[name]
            deleting = body is None or bool(_meta(body).get("deletionTimestamp"))
            if not deleting and body is not None:
                # Still exists but no longer selects this node: a switch for its pods.
                cni_name = NetworkSpec.model_validate(managed.spec).cni_name(name)
                count = attachments.count(cni_name)
                decision = decide(
                    ["nodeSelector"] if count else [],
                    count,
                    acknowledged(_annotations(body), _generation(body), self.node_name),
                    cni_name,
                )
                if not decision.allowed:
                    entries[name] = self._blocked_entry(name, body, manifest, decision, count)
                    continue
            remove(self.paths.conf_dir / managed.file)
            del manifest.networks[name]
            restored = Quarantine(self.paths).restore(name, final=deleting)
            message = "removed from this node"
            if restored:
                message += "; restored " + ", ".join(
                    o.entry.original for o in restored if o.restored
                )
            if body is not None:
                entries[name] = self._entry(name, body, manifest, STATE_REMOVED, message)
        # A network deleted while never applied here may still have quarantined files.
        for entry in Quarantine(self.paths).entries():
            if entry.network not in desired and entry.network not in manifest.networks:
                gone = entry.network not in networks or bool(
                    _meta(networks[entry.network]).get("deletionTimestamp")
                )
                Quarantine(self.paths).restore(entry.network, final=gone)

    # --------------------------------------------------------------- apply
    def _install_binaries(
        self, spec: NetworkSpec, rendered: RenderedConfig, manifest: Manifest
    ) -> list[str]:
        problems = []
        own = self.own_binaries()
        declared = {b.name: b for b in spec.binaries}
        wanted = list(dict.fromkeys([*rendered.plugin_types, *declared]))
        for kind in wanted:
            try:
                if kind in declared:
                    data = binaries.fetch_declared(declared[kind])
                    source = declared[kind].source.file or declared[kind].source.url or ""
                elif kind in own:
                    data, source = own[kind], self.own_source.label
                else:
                    continue  # provided by the node (e.g. the distribution's plugins)
                result = binaries.install(
                    self.paths,
                    manifest,
                    kind,
                    data,
                    source,
                    before_write=lambda: manifest_io.save(self.paths, manifest),
                )
            except (OSError, binaries.BinaryError) as error:
                problems.append(str(error))
                continue
            if not result.installed:
                problems.append(result.message)
        return problems

    def _apply(
        self,
        *,
        name: str,
        body: Mapping[str, Any],
        spec: NetworkSpec,
        facts: NodeFacts,
        manifest: Manifest,
        attachments: AttachmentScan,
        entries: dict[str, dict[str, Any]],
        problems: list[Problem],
    ) -> None:
        generation = _generation(body)
        try:
            rendered = render(name, spec, facts)
        except SpecError as error:
            entries[name] = self._entry(name, body, manifest, STATE_INVALID, str(error))
            return
        issues = self._install_binaries(spec, rendered, manifest)
        versions = self.prober.bin_dir_versions(self.paths.bin_dir, rendered.plugin_types)
        issues += check_against_binaries(rendered, versions)
        if issues:
            message = "not written, the last good config stays: " + "; ".join(issues)
            entries[name] = self._entry(name, body, manifest, STATE_INVALID, message)
            problems.append(
                Problem(
                    "NetworkNotApplicable",
                    ERROR,
                    f"network {name}: {'; '.join(issues)}",
                    f"Install the missing plugin binaries into {self.paths.bin_dir} or declare "
                    "them under spec.binaries; set cniVersion to one every plugin lists.",
                )
            )
            return

        managed = manifest.networks.get(name)
        digest = sha256_bytes(rendered.content)
        is_acked = acknowledged(_annotations(body), generation, self.node_name)
        held_fields: list[str] = []
        held_count = 0
        if managed is not None and (managed.generation != generation or managed.sha256 != digest):
            old_spec = NetworkSpec.model_validate(managed.spec)
            change = classify(old_spec, spec)
            count = attachments.count(old_spec.cni_name(name))
            if change.unsafe and count:
                held_fields += change.unsafe
                held_count += count
        takeover = self._takeover(name, rendered, managed, attachments)
        if takeover is not None:
            held_fields.append(takeover[0])
            held_count += takeover[1]
        decision = decide(held_fields, held_count, is_acked, spec.cni_name(name))
        if not decision.allowed:
            if managed is not None and not (self.paths.conf_dir / managed.file).exists():
                # Keep the last applied config in place even if someone removed it.
                old = render(name, NetworkSpec.model_validate(managed.spec), facts)
                atomic_write(self.paths.conf_dir / managed.file, old.content)
            entries[name] = self._blocked_entry(name, body, manifest, decision, held_count)
            return

        target = self.paths.conf_dir / rendered.file_name
        manifest.networks[name] = ManagedNetwork(
            rendered.file_name, digest, generation, spec.model_dump(mode="json", exclude_none=True)
        )
        manifest_io.save(self.paths, manifest)  # intent first: a crash leaves our file known
        current = target.read_bytes() if target.is_file() else None
        if current != rendered.content:
            atomic_write(target, rendered.content)
        if managed is not None and managed.file != rendered.file_name:
            remove(self.paths.conf_dir / managed.file)
        entries[name] = self._entry(
            name,
            body,
            manifest,
            STATE_APPLIED,
            decision.reason if held_fields else f"generation {generation} applied",
            attachments=attachments.count(spec.cni_name(name)),
        )

    def _takeover(
        self,
        name: str,
        rendered: RenderedConfig,
        managed: ManagedNetwork | None,
        attachments: AttachmentScan,
    ) -> tuple[str, int] | None:
        """Would writing this file change the network new pods get while pods are
        attached to the current one? Returns (field, attachments) if so."""
        files = read_config_dir(self.paths.conf_dir)
        after = dict(files)
        if managed is not None:
            after.pop(managed.file, None)
        after[rendered.file_name] = rendered.content
        no_versions: dict[str, list[str] | None] = {}
        before_net = analyze(files.items(), (), no_versions).containerd.network
        after_net = analyze(after.items(), (), no_versions).containerd.network
        if before_net is None or before_net == after_net:
            return None
        count = attachments.count(before_net)
        if count == 0:
            return None
        return f"priority (new pods would move from network {before_net} to {after_net})", count

    # --------------------------------------------------------- shadow guard
    def _shadow_guard(
        self,
        desired: Mapping[str, tuple[Mapping[str, Any], NetworkSpec]],
        manifest: Manifest,
        attachments: AttachmentScan,
        problems: list[Problem],
        events: list[AgentEvent],
    ) -> None:
        quarantine = Quarantine(self.paths)
        wants = {name for name, (_, spec) in desired.items() if spec.shadowPolicy == "Quarantine"}
        for entry in quarantine.entries():
            if entry.network not in wants:
                for outcome in quarantine.restore(entry.network):
                    if outcome.restored:
                        events.append(
                            AgentEvent(
                                entry.network,
                                "Normal",
                                "Restored",
                                f"node {self.node_name}: restored {outcome.entry.original}",
                            )
                        )
        files = read_config_dir(self.paths.conf_dir)
        analysis = analyze(files.items(), manifest.config_files & set(files), {})
        if not analysis.ours_order:
            return
        first = analysis.ours_order[0]
        owner = next((n for n, m in manifest.networks.items() if m.file == first), None)
        if owner is None or owner not in wants:
            return
        for file_name in analysis.shadowing_files:
            path = self.paths.conf_dir / file_name
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < QUARANTINE_SETTLE_SECONDS:
                # Perhaps still being written (create, then write): look again soon
                # rather than move half a file.
                self.recheck_in = min(self.recheck_in or 1e9, QUARANTINE_SETTLE_SECONDS - age)
                continue
            foreign_net = parse_config(file_name, files.get(file_name)).network
            count = attachments.count(foreign_net) if foreign_net else 0
            if count:
                problems.append(
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
            entry = quarantine.quarantine(path, owner)
            events.append(
                AgentEvent(
                    owner,
                    "Normal",
                    "Quarantined",
                    f"node {self.node_name}: moved {entry.original} to {entry.stored} "
                    f"(sha256 {entry.sha256[:12]}...) at {now_iso()}",
                )
            )

    def _cleanup_binaries(
        self, desired: Mapping[str, tuple[Mapping[str, Any], NetworkSpec]], manifest: Manifest
    ) -> None:
        keep: set[str] = set()
        for managed in manifest.networks.values():
            path = self.paths.conf_dir / managed.file
            data = path.read_bytes() if path.is_file() else None
            keep.update(parse_config(managed.file, data).types)
        for _, spec in desired.values():
            keep.update(b.name for b in spec.binaries)
        binaries.uninstall_unused(self.paths, manifest, keep)
