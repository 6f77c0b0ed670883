"""A thin, synchronous wrapper over the official client for the few writes we do
outside kopf's handlers: our CRs' status, and Events. Call it from a thread
(`asyncio.to_thread`), never from the event loop directly.

Nodes and Events go through the client's generic request path (plain dicts in and
out), not `CoreV1Api`: importing that one class loads the client's ~250 generated
core models, 21 MB of RSS in every agent and controller (docs/performance.md)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from cni_operator import api
from cni_operator.kube_time import now_iso

log = logging.getLogger("cniwarden.kube")


class Kube:
    def __init__(self, kubeconfig: str | None = None) -> None:
        if kubeconfig:
            kubernetes.config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
        self.client = kubernetes.client.ApiClient()
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def _core(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request to the core API, JSON in and out (raises ApiException)."""
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request)
        response.read()
        return self.client.response_deserialize(response, {"2XX": "object"}).data

    # --- CNINetwork -------------------------------------------------------------
    def patch_network_status(self, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_cluster_custom_object_status(
                api.GROUP, api.VERSION, api.NETWORK_PLURAL, name, {"status": status}
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def list_networks(self) -> list[dict[str, Any]]:
        listing: dict[str, Any] = self.custom.list_cluster_custom_object(  # type: ignore[assignment]
            api.GROUP, api.VERSION, api.NETWORK_PLURAL
        )
        return list(listing.get("items", []))

    def list_networks_with_version(self) -> tuple[int, list[dict[str, Any]]]:
        listing: dict[str, Any] = self.custom.list_cluster_custom_object(  # type: ignore[assignment]
            api.GROUP, api.VERSION, api.NETWORK_PLURAL
        )
        try:
            version = int(listing.get("metadata", {}).get("resourceVersion") or 0)
        except ValueError:
            version = 0
        return version, list(listing.get("items", []))

    # --- CNINodeState -----------------------------------------------------------
    def get_node_state(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
                api.GROUP, api.VERSION, api.NODE_STATE_PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def ensure_node_state(self, node: dict[str, Any] | None, name: str) -> dict[str, Any]:
        """The node's CNINodeState, created if missing."""
        existing = self.get_node_state(name)
        if existing is not None:
            return existing
        body: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.NODE_STATE_KIND,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "cniwarden"}},
            "spec": {"nodeName": name},
        }
        if node is not None:
            # Garbage-collected with its Node, so a node that is gone leaves no report.
            body["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": name,
                    "uid": node["metadata"]["uid"],
                }
            ]
        try:
            created: dict[str, Any] = self.custom.create_cluster_custom_object(  # type: ignore[assignment]
                api.GROUP, api.VERSION, api.NODE_STATE_PLURAL, body
            )
        except ApiException as error:
            if error.status != 409:
                raise
            return self.get_node_state(name) or body
        return created

    def patch_node_state_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object_status(
            api.GROUP, api.VERSION, api.NODE_STATE_PLURAL, name, {"status": status}
        )

    # --- Nodes and Events -------------------------------------------------------
    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            node: dict[str, Any] = self._core("GET", f"/api/v1/nodes/{quote(name, safe='')}")
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return node

    def list_nodes(self) -> list[dict[str, Any]]:
        listing: dict[str, Any] = self._core("GET", "/api/v1/nodes")
        return list(listing.get("items", []))

    def post_event(
        self, obj: dict[str, Any], kind: str, reason: str, message: str, component: str
    ) -> None:
        """An Event about a cluster-scoped object (stored in `default`, as kubectl expects)."""
        meta = obj.get("metadata", {})
        stamp = now_iso()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'cniwarden')}.",
                "namespace": "default",
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", api.API_VERSION),
                "kind": obj.get("kind", api.NETWORK_KIND),
                "name": meta.get("name"),
                "uid": meta.get("uid"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component, "host": socket.gethostname()},
            "reportingComponent": component,
            "reportingInstance": f"{component}-{os.getpid()}",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        # Events are best effort: the condition and the node report carry the truth. A
        # refused Event is logged (e.g. RBAC without `events create`), never silent.
        try:
            self._core("POST", "/api/v1/namespaces/default/events", body)
        except ApiException as error:
            log.warning(
                "Event %s about %s not posted: %s %s",
                reason,
                meta.get("name"),
                error.status,
                error.reason,
            )
