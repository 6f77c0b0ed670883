"""Ask the node's container runtime itself: CRI v1 `Version`, `Status` and
`ListPodSandbox` over its socket under the host root, each call with a deadline.

The one CRI client of the agent, the doctor and `cniwarden gc`. The stubs are
generated from k8s.io/cri-api's api.proto (`cni_operator/cri/`,
scripts/gen-cri-stubs.sh); grpcio carries the calls. Only read-only calls kubelet
itself makes every few seconds are used: nothing here changes the runtime.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from cni_operator.cri import cri_runtime_v1_pb2 as cri
from cni_operator.node.sandboxes import SandboxListing
from cni_operator.runtime_truth import RuntimeFacts

# Where runtimes put their CRI socket, as the node names it (the first that
# answers wins): containerd, CRI-O, and the distributions that move containerd's.
WELL_KNOWN_ENDPOINTS = (
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/k3s/containerd/containerd.sock",
)
CALL_TIMEOUT_SECONDS = 2.0
# Listing every sandbox is the one call whose answer grows with the node.
LIST_TIMEOUT_SECONDS = 10.0
# kubelet's own limit for CRI answers (grpc's default, 4 MiB, is ~10k sandboxes).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_SERVICE = "/runtime.v1.RuntimeService/"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _grpc_error(error: grpc.RpcError) -> str:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    name = code.name if code is not None else "ERROR"
    return f"{name}: {details}"


@dataclass(frozen=True)
class Identity:
    endpoint: str  # as the node names it
    name: str
    version: str
    api_version: str


class CriClient:
    """One runtime socket (a path in this process's view), one channel."""

    def __init__(self, socket: Path, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self.socket = socket
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix://{socket}", options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        )
        self._version = self._channel.unary_unary(
            _SERVICE + "Version",
            request_serializer=cri.VersionRequest.SerializeToString,
            response_deserializer=cri.VersionResponse.FromString,
        )
        self._status = self._channel.unary_unary(
            _SERVICE + "Status",
            request_serializer=cri.StatusRequest.SerializeToString,
            response_deserializer=cri.StatusResponse.FromString,
        )
        self._list_sandboxes = self._channel.unary_unary(
            _SERVICE + "ListPodSandbox",
            request_serializer=cri.ListPodSandboxRequest.SerializeToString,
            response_deserializer=cri.ListPodSandboxResponse.FromString,
        )

    def version(self) -> cri.VersionResponse:
        response: cri.VersionResponse = self._version(
            cri.VersionRequest(version="v1"), timeout=self.timeout
        )
        return response

    def status(self) -> cri.StatusResponse:
        response: cri.StatusResponse = self._status(
            cri.StatusRequest(verbose=False), timeout=self.timeout
        )
        return response

    def list_pod_sandboxes(self, timeout: float = LIST_TIMEOUT_SECONDS) -> frozenset[str]:
        """Ids of every sandbox the runtime has, in any state (no filter)."""
        response: cri.ListPodSandboxResponse = self._list_sandboxes(
            cri.ListPodSandboxRequest(), timeout=timeout
        )
        return frozenset(item.id for item in response.items)

    def close(self) -> None:
        self._channel.close()


class RuntimeProbe:
    """The node's runtime, found once and asked again on every `facts()` call.

    `endpoint`: the socket as the node names it (None: try the well-known ones).
    The runtime's identity is asked again after any failed call, so a runtime
    restarted (or upgraded) under the agent is noticed. Thread-safe: the agent's
    runtime watch, its passes and its leak repair share one probe.
    """

    def __init__(
        self,
        host_root: Path,
        endpoint: str | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
        list_timeout: float = LIST_TIMEOUT_SECONDS,
    ) -> None:
        self.host_root = host_root
        self.list_timeout = list_timeout
        self._lock = threading.Lock()
        self.candidates: Sequence[str] = (
            (_strip_scheme(endpoint),) if endpoint else WELL_KNOWN_ENDPOINTS
        )
        self.timeout = timeout
        self._client: CriClient | None = None
        self._identity: Identity | None = None
        self._identify_error = ""

    def _local(self, endpoint: str) -> Path:
        return self.host_root / endpoint.lstrip("/")

    def _identify(self) -> None:
        self._close()
        errors = []
        for endpoint in self.candidates:
            socket = self._local(endpoint)
            if not _is_socket(socket):
                errors.append(f"{endpoint}: no socket")
                continue
            client = CriClient(socket, self.timeout)
            try:
                answer = client.version()
            except grpc.RpcError as error:
                client.close()
                errors.append(f"{endpoint}: {_grpc_error(error)}")
                continue
            self._client = client
            self._identity = Identity(
                endpoint,
                answer.runtime_name,
                answer.runtime_version,
                answer.runtime_api_version,
            )
            self._identify_error = ""
            return
        root = f" under {self.host_root}" if str(self.host_root) != "/" else ""
        self._identify_error = "no CRI socket answered" + root + " (" + "; ".join(errors) + ")"

    def facts(self) -> RuntimeFacts:
        """Identity (asked once, again after a failure) and NetworkReady (asked now)."""
        with self._lock:
            return self._facts()

    def list_sandboxes(self) -> SandboxListing:
        """The runtime's sandboxes of every state (a NotReady sandbox still owns its
        lease until the runtime's DEL). None, never an empty set, when the runtime
        cannot be asked: "unknown" must never read as "every sandbox is gone"."""
        with self._lock:
            if self._client is None:
                self._identify()
            if self._client is None or self._identity is None:
                return SandboxListing(None, None, self._identify_error)
            endpoint = self._identity.endpoint
            try:
                ids = self._client.list_pod_sandboxes(self.list_timeout)
            except grpc.RpcError as error:
                self._close()
                return SandboxListing(
                    None, endpoint, f"CRI ListPodSandbox on {endpoint}: {_grpc_error(error)}"
                )
            return SandboxListing(ids, endpoint)

    def _facts(self) -> RuntimeFacts:
        if self._client is None:
            self._identify()
        if self._client is None or self._identity is None:
            return RuntimeFacts(identify_error=self._identify_error)
        ident = self._identity
        base = RuntimeFacts(
            endpoint=ident.endpoint,
            name=ident.name,
            version=ident.version,
            api_version=ident.api_version,
        )
        try:
            answer = self._client.status()
        except grpc.RpcError as error:
            self._close()  # identify again next time: the runtime may have been replaced
            return replace(
                base, status_error=f"CRI Status on {ident.endpoint}: {_grpc_error(error)}"
            )
        for condition in answer.status.conditions:
            if condition.type == "NetworkReady":
                return replace(
                    base,
                    network_ready=condition.status,
                    network_reason=condition.reason,
                    network_message=condition.message,
                )
        return replace(base, status_error="CRI Status has no NetworkReady condition")

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None
        self._identity = None


def _strip_scheme(endpoint: str) -> str:
    """crictl-style `unix:///run/x.sock` or a plain path -> the path."""
    return endpoint.removeprefix("unix://")
