"""The cluster tiers, ordered from cheapest to most complete."""

from __future__ import annotations

import enum


class Tier(enum.Enum):
    """What a local cluster runs. Each tier includes everything of the ones before it."""

    CONTROL_PLANE = "control-plane"
    FAKE_NODES = "fake-nodes"
    REAL_NODE = "real-node"

    @property
    def rank(self) -> int:
        return list(Tier).index(self)

    def includes(self, other: Tier) -> bool:
        """True when a cluster at this tier can serve a test that asks for `other`."""
        return self.rank >= other.rank

    @classmethod
    def parse(cls, value: str) -> Tier:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(t.value for t in cls)
            raise ValueError(f"unknown cluster tier {value!r}; choose one of: {choices}") from None

    @classmethod
    def highest(cls, tiers: list[Tier]) -> Tier | None:
        return max(tiers, key=lambda t: t.rank) if tiers else None
