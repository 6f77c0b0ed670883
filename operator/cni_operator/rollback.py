"""`cniwarden rollback NETWORK [--to-revision N]`: put a kept revision's spec back.

The spec is replaced with a JSON patch that first tests the object's
resourceVersion, so an edit made meanwhile is never overwritten; the API server's
schema and admission policies, then every agent's switch gate, judge it exactly as
a `kubectl edit` (a rollback that would strand pods is held like any other change).
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from cni_operator import api
from cni_operator.revisions import RollbackError, rollback_target


def main(
    network: str,
    *,
    to_revision: int | None,
    kubeconfig: str | None,
    dry_run: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from cni_operator.kube import JSON_PATCH, Kube  # noqa: PLC0415

    kube = Kube(kubeconfig)
    try:
        body: dict[str, Any] = kube.custom.get_cluster_custom_object(  # type: ignore[assignment]
            api.GROUP, api.VERSION, api.NETWORK_PLURAL, network, _request_timeout=30
        )
    except ApiException as error:
        print(
            f"cniwarden rollback: cannot read CNINetwork {network}: {error.reason}", file=sys.stderr
        )
        return 1
    status = body.get("status") or {}
    try:
        target = rollback_target(status.get("revisions") or [], body.get("spec") or {}, to_revision)
    except RollbackError as error:
        print(f"cniwarden rollback: {network}: {error}", file=sys.stderr)
        return 1
    line = (
        f"{network}: revision {status.get('revision', '?')} -> revision {target['revision']} "
        f"(generation {target['generation']}, {target.get('time', '')})"
    )
    if dry_run:
        out.write(f"would roll back {line}\n{json.dumps(target['spec'], indent=2)}\n")
        return 0
    version = body["metadata"]["resourceVersion"]
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "replace", "path": "/spec", "value": target["spec"]},
    ]
    try:
        kube.custom.patch_cluster_custom_object(
            api.GROUP,
            api.VERSION,
            api.NETWORK_PLURAL,
            network,
            patch,
            _request_timeout=30,
            _content_type=JSON_PATCH,
        )
    except ApiException as error:
        detail = error.body if isinstance(error.body, str) else error.reason
        print(f"cniwarden rollback: {network}: refused: {detail}"[:2000], file=sys.stderr)
        return 1
    out.write(
        f"rolled back {line}; the agents apply it through the switch gate "
        f"(`kubectl get cninetwork {network}` shows the revision once Ready)\n"
    )
    return 0
