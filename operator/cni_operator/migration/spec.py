"""`CNIMigration.spec` as a pydantic model: the CRD in crds/ is the API server's copy
of the same rules (CEL there, validators here), so a spec the controller reads from
an older API server, or a test builds by hand, is held to them too.

Pure: no kopf or kubernetes imports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PeerKind = Literal["MigratedNode", "UnmigratedNode", "DefaultRoute"]
ALL_PEERS: tuple[PeerKind, ...] = ("MigratedNode", "UnmigratedNode", "DefaultRoute")


class MigrationSource(BaseModel):
    """`spec.from`: a foreign network as named on the nodes, or a CNINetwork."""

    model_config = ConfigDict(extra="forbid")

    networkName: str | None = Field(default=None, min_length=1, max_length=253)
    cniNetwork: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _exactly_one(self) -> MigrationSource:
        if (self.networkName is None) == (self.cniNetwork is None):
            raise ValueError(
                "from needs exactly one of networkName (a foreign network as named on "
                "the nodes) or cniNetwork"
            )
        return self


class MigrationTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cniNetwork: str = Field(min_length=1, max_length=200)


class Waves(BaseModel):
    model_config = ConfigDict(extra="forbid")

    byLabel: str | None = Field(default=None, min_length=1, max_length=317)
    order: list[str] = Field(default_factory=list, max_length=64)
    maxUnavailable: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _order_needs_label(self) -> Waves:
        if self.order and self.byLabel is None:
            raise ValueError("waves.order lists values of waves.byLabel: set byLabel too")
        if len(set(self.order)) != len(self.order):
            raise ValueError("waves.order lists a value twice")
        return self


class Drain(BaseModel):
    """Evictions always go through the Eviction API: PDBs cannot be bypassed."""

    model_config = ConfigDict(extra="forbid")

    timeoutSeconds: int = Field(default=600, ge=1, le=86400)
    gracePeriodSeconds: int | None = Field(default=None, ge=0, le=86400)


class Verify(BaseModel):
    model_config = ConfigDict(extra="forbid")

    probeImage: str | None = Field(default=None, min_length=1, max_length=1024)
    peers: list[PeerKind] = Field(default_factory=lambda: list(ALL_PEERS), max_length=3)


class MigrationSpec(BaseModel):
    """`CNIMigration.spec`. `from` is a Python keyword: the field is `source`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    source: MigrationSource = Field(alias="from")
    to: MigrationTarget
    nodeSelector: dict[str, str] = Field(default_factory=dict, max_length=32)
    waves: Waves = Field(default_factory=Waves)
    drain: Drain = Field(default_factory=Drain)
    verify: Verify = Field(default_factory=Verify)
    pause: bool = False
    resume: int = Field(default=0, ge=0)
    skipNodes: list[str] = Field(default_factory=list, max_length=5000)
    rollback: bool = False

    @model_validator(mode="after")
    def _not_to_itself(self) -> MigrationSpec:
        if self.source.cniNetwork is not None and self.source.cniNetwork == self.to.cniNetwork:
            raise ValueError(
                "from.cniNetwork and to.cniNetwork must differ: a network cannot be "
                "migrated to itself"
            )
        return self

    @property
    def from_label(self) -> str:
        """The old network, as messages name it."""
        if self.source.cniNetwork is not None:
            return f"CNINetwork {self.source.cniNetwork}"
        return f"network {self.source.networkName}"
