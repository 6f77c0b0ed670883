"""What the controller and the node agent share as kopf operators: how they log in,
how quiet kopf's own log is, and how they run."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf


def new_registry() -> kopf.OperatorRegistry:
    """A registry that logs in with the official client's config (in-cluster or kubeconfig)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    return registry


def quiet_kopf_objects() -> None:
    """kopf logs every handled watch event at INFO; keep the log for what matters."""
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def run(registry: kopf.OperatorRegistry, liveness_endpoint: str | None) -> None:
    """Run the handlers of `registry` cluster-wide, as the only instance (no peering)."""
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=True,
            standalone=True,
            liveness_endpoint=liveness_endpoint,
        )
    )
