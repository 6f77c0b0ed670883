"""The types the steps of a pass hand each other, so each step says what it needs.

Pure: no I/O. A step that changes files takes the pass's working `Manifest`
and updates it in place (the orchestrator saves it); everything else a step
produces is returned in one of these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_operator.api import NetworkSpec
from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.problems import Problem
from cni_operator.runtime_order import RuntimeRules
from cni_operator.switch_gate import acknowledged


@dataclass(frozen=True)
class AgentEvent:
    """An Event the agent posts about a CNINetwork, or about this node's CNINodeState
    when `network` is None (`type`: Normal | Warning)."""

    network: str | None
    type: str
    reason: str
    message: str


@dataclass
class PassResult:
    """What one pass hands the agent to publish."""

    status: dict[str, Any]
    events: list[AgentEvent] = field(default_factory=list)
    recheck_in: float | None = None  # run another pass after this many seconds
    # The specs of the networks whose files are on this node after the pass; None
    # when the pass could not tell (its manifest was unreadable): keep the last known.
    applied_specs: dict[str, dict[str, Any]] | None = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkObject:
    """What a pass uses from one CNINetwork object of the snapshot.

    `spec` is None when the object is being deleted (its spec no longer matters)
    or when it does not parse (`spec_error` says why).
    """

    name: str
    generation: int
    annotations: Mapping[str, str]
    deleting: bool
    spec: NetworkSpec | None = None
    spec_error: str | None = None

    @property
    def invalid(self) -> bool:
        """An invalid spec keeps the last good file: it is neither applied nor removed."""
        return not self.deleting and self.spec_error is not None

    def acknowledged_on(self, node_name: str) -> bool:
        return acknowledged(self.annotations, self.generation, node_name)


@dataclass(frozen=True)
class DesiredNetwork:
    """A CNINetwork that selects this node, with a spec that parsed."""

    object: NetworkObject
    spec: NetworkSpec

    @property
    def name(self) -> str:
        return self.object.name

    @property
    def generation(self) -> int:
        return self.object.generation


@dataclass(frozen=True)
class NetworkEntry:
    """This node's line about one network in `CNINodeState.status.networks`."""

    name: str
    state: str
    message: str
    desired_generation: int | None = None
    applied_generation: int | None = None
    file: str | None = None
    blocked_fields: tuple[str, ...] | None = None
    attachments: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "state": self.state, "message": self.message}
        optional: dict[str, Any] = {
            "desiredGeneration": self.desired_generation,
            "appliedGeneration": self.applied_generation,
            "file": self.file,
            "blockedFields": None if self.blocked_fields is None else list(self.blocked_fields),
            "attachments": self.attachments,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        return out


@dataclass(frozen=True)
class NodeContext:
    """Where the pass works and in whose name."""

    paths: HostPaths
    node_name: str
    # The node's runtime as it named itself over CRI (None: unidentified, judged by
    # every rule set).
    runtimes: tuple[RuntimeRules, ...] | None = None

    def entry(
        self,
        name: str,
        desired_generation: int | None,
        manifest: Manifest,
        state: str,
        message: str,
        *,
        blocked_fields: tuple[str, ...] | None = None,
        attachments: int | None = None,
    ) -> NetworkEntry:
        """An entry that also says what the manifest holds for `name` right now."""
        managed = manifest.networks.get(name)
        return NetworkEntry(
            name=name,
            state=state,
            message=message,
            desired_generation=desired_generation,
            applied_generation=None if managed is None else managed.generation,
            file=None
            if managed is None
            else self.paths.host_view(self.paths.conf_dir / managed.file),
            blocked_fields=blocked_fields,
            attachments=attachments,
        )


@dataclass
class StepOutput:
    """What a step adds to the pass's report: network entries, problems, Events."""

    entries: dict[str, NetworkEntry] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    events: list[AgentEvent] = field(default_factory=list)

    def merge(self, other: StepOutput) -> None:
        self.entries.update(other.entries)
        self.problems.extend(other.problems)
        self.events.extend(other.events)
