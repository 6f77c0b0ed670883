"""A thin, synchronous wrapper over the official client for the few writes we do
outside kopf's handlers: our CRs' status, and Events. Call it from a thread
(`asyncio.to_thread`), never from the event loop directly.

Nodes and Events go through the client's generic request path (plain dicts in and
out), not `CoreV1Api`: importing that one class loads the client's ~250 generated
core models, 21 MB of RSS in every agent and controller (docs/performance.md)."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from cni_operator import api, noderoutes
from cni_operator.kube_time import now_iso

log = logging.getLogger("cniwarden.kube")
MERGE_PATCH = "application/merge-patch+json"
# What the Eviction API answered for one pod.
EVICTED = "Evicted"
EVICTION_GONE = "Gone"  # no such pod (or another pod under that name): nothing to evict
EVICTION_BLOCKED = "Blocked"  # 429: a PodDisruptionBudget allows no disruption now
# The client would send a list body as a merge patch; say what it is.
JSON_PATCH = "application/json-patch+json"


class WatchEndedError(Exception):
    """The API server ended a watch with an ERROR event (e.g. 410: too old a version)."""


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

    def _core(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One request to the core API, JSON in and out (raises ApiException), under
        a deadline."""
        request = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request, _request_timeout=timeout)
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

    def get_network(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
                api.GROUP, api.VERSION, api.NETWORK_PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def set_network_annotations(self, name: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into a CNINetwork's (the switch gate's acknowledgement)."""
        self.custom.patch_cluster_custom_object(
            api.GROUP,
            api.VERSION,
            api.NETWORK_PLURAL,
            name,
            {"metadata": {"annotations": annotations}},
        )

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

    # --- Node -------------------------------------------------------------------
    def set_node_taints(
        self, name: str, taints: list[dict[str, Any]], resource_version: str
    ) -> None:
        """Replace spec.taints, only if the Node is still at `resource_version` (a JSON
        patch `test`): a taint someone else added meanwhile is never overwritten."""
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "add", "path": "/spec/taints", "value": taints},
        ]
        self._core("PATCH", f"/api/v1/nodes/{quote(name, safe='')}", patch, content_type=JSON_PATCH)

    def set_node_unschedulable(self, name: str, unschedulable: bool) -> None:
        """Cordon or uncordon, as `kubectl cordon` does (a merge patch of the one field)."""
        patch = {"spec": {"unschedulable": True if unschedulable else None}}
        self._core(
            "PATCH", f"/api/v1/nodes/{quote(name, safe='')}", patch, content_type=MERGE_PATCH
        )

    def set_node_label(self, name: str, key: str, value: str | None) -> None:
        """Set one label of a Node (None removes it)."""
        patch = {"metadata": {"labels": {key: value}}}
        self._core(
            "PATCH", f"/api/v1/nodes/{quote(name, safe='')}", patch, content_type=MERGE_PATCH
        )

    def evict_pod(
        self, namespace: str, name: str, uid: str, grace_seconds: int | None
    ) -> tuple[str, str]:
        """Ask the Eviction API to evict one pod: (EVICTED | EVICTION_GONE |
        EVICTION_BLOCKED, the server's message). The uid precondition makes sure a
        new pod that took the name is never evicted in its place. Other errors raise."""
        delete_options: dict[str, Any] = {"preconditions": {"uid": uid}}
        if grace_seconds is not None:
            delete_options["gracePeriodSeconds"] = grace_seconds
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": delete_options,
        }
        path = (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/eviction"
        )
        try:
            self._core("POST", path, body)
        except ApiException as error:
            if error.status == 429:
                return EVICTION_BLOCKED, _message(error)
            if error.status in (404, 409):
                return EVICTION_GONE, _message(error)
            raise
        return EVICTED, ""

    def list_events(self, field_selector: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Events of every namespace matching `field_selector`, as JSON objects."""
        listing = self._core(
            "GET", "/api/v1/events", query={"fieldSelector": field_selector}, timeout=timeout
        )
        return list(listing.get("items") or [])

    def list_pods(
        self, field_selector: str, label_selector: str, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        """Pods of every namespace matching both selectors, as JSON objects."""
        query = {"fieldSelector": field_selector, "labelSelector": label_selector}
        listing = self._core("GET", "/api/v1/pods", query=query, timeout=timeout)
        return list(listing.get("items") or [])

    # --- the migration's probe pods ----------------------------------------------
    @staticmethod
    def _pod_path(namespace: str, name: str) -> str:
        return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = self._core("GET", self._pod_path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return pod

    def create_pod(self, body: dict[str, Any]) -> None:
        """Create a pod; one that already exists under that name is left as it is."""
        namespace = body["metadata"]["namespace"]
        try:
            self._core("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/pods", body)
        except ApiException as error:
            if error.status != 409:
                raise

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self._core("DELETE", self._pod_path(namespace, name), {"gracePeriodSeconds": 0})
        except ApiException as error:
            if error.status != 404:
                raise

    def pod_log(self, namespace: str, name: str, limit_bytes: int = 65536) -> str:
        """The pod's (first container's) log, at most `limit_bytes`, as text."""
        request = self.client.param_serialize(
            method="GET",
            resource_path=self._pod_path(namespace, name) + "/log",
            query_params=[("limitBytes", str(limit_bytes))],
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request, _request_timeout=30.0)
        data = response.read()
        if not 200 <= response.status < 300:
            raise ApiException(status=response.status, reason=str(data[:200]))
        return bytes(data).decode("utf-8", "replace")

    # --- CNIMigration -------------------------------------------------------------
    def patch_migration_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_cluster_custom_object_status(
            api.GROUP, api.VERSION, api.MIGRATION_PLURAL, name, {"status": status}
        )

    def get_migration(self, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
                api.GROUP, api.VERSION, api.MIGRATION_PLURAL, name
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

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

    def list_nodes_with_version(self, timeout: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
        """Every Node and the list's resourceVersion (for `noderoutes.Projection`)."""
        listing: dict[str, Any] = self._core("GET", "/api/v1/nodes", timeout=timeout)
        try:
            version = int((listing.get("metadata") or {}).get("resourceVersion") or 0)
        except ValueError:
            version = 0
        return version, list(listing.get("items") or [])

    def watch_node(
        self, name: str, resource_version: str, server_timeout: int = 240
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) of the watch events of one Node, field-selected on its name by
        the API server (no other Node's update reaches us), from `resource_version` until
        the server ends the watch after `server_timeout` seconds. Every read has a
        deadline (the server's timeout plus a margin); an ERROR event (e.g. 410 Gone)
        raises `WatchEndedError`, and the caller lists again."""
        query = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={name}"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(server_timeout)),
        ]
        request = self.client.param_serialize(
            method="GET",
            resource_path="/api/v1/nodes",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*request, _request_timeout=(10.0, server_timeout + 30.0))
        raw = response.response  # urllib3's, not read yet: a stream
        try:
            if not 200 <= response.status < 300:
                raise ApiException(status=response.status, reason=str(response.read()[:200]))
            buffer = b""
            for chunk in raw.stream(65536, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type") or ""), event.get("object") or {}
                    if kind == "ERROR":
                        raise WatchEndedError(str(obj.get("message") or obj))
                    yield kind, obj
        finally:
            raw.release_conn()

    # --- CNINodeRoutes (the slim projection of the Nodes, noderoutes.py) ---------
    def get_node_routes(self) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_cluster_custom_object(  # type: ignore[assignment]
                api.GROUP, api.VERSION, noderoutes.PLURAL, noderoutes.NAME, _request_timeout=30.0
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def write_node_routes(self, spec: dict[str, Any], exists: bool) -> dict[str, Any]:
        """Create the projection, or replace its spec.nodes (a merge patch replaces a
        list whole); returns the stored object."""
        result: dict[str, Any]
        if not exists:
            body = dict(noderoutes.body_of(()), spec=spec)
            try:
                result = self.custom.create_cluster_custom_object(  # type: ignore[assignment]
                    api.GROUP, api.VERSION, noderoutes.PLURAL, body, _request_timeout=30.0
                )
                return result
            except ApiException as error:
                if error.status != 409:
                    raise
        result = self.custom.patch_cluster_custom_object(  # type: ignore[assignment]
            api.GROUP,
            api.VERSION,
            noderoutes.PLURAL,
            noderoutes.NAME,
            {"spec": spec},
            _request_timeout=30.0,
        )
        return result

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


def _message(error: ApiException) -> str:
    """The API server's own message out of an error's Status body."""
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return str(error.reason)
    return str(body.get("message") or error.reason) if isinstance(body, dict) else str(error.reason)
