"""Ask the node's container runtime itself: CRI v1 `Version` and `Status` over its
socket under the host root, each call with a deadline.

The stubs are generated from k8s.io/cri-api's api.proto (`cni_operator/cri/`,
scripts/gen-cri-stubs.sh); grpcio carries the calls. Only the two read-only calls
kubelet itself makes every few seconds are used: nothing here changes the runtime.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc

from cni_operator.cri import cri_runtime_v1_pb2 as cri
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
        self._channel = grpc.insecure_channel(f"unix://{socket}")
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

    def close(self) -> None:
        self._channel.close()


class RuntimeProbe:
    """The node's runtime, found once and asked again on every `facts()` call.

    `endpoint`: the socket as the node names it (None: try the well-known ones).
    The runtime's identity is asked again after any failed call, so a runtime
    restarted (or upgraded) under the agent is noticed.
    """

    def __init__(
        self,
        host_root: Path,
        endpoint: str | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
    ) -> None:
        self.host_root = host_root
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
        self.close()
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
            self.close()  # identify again next time: the runtime may have been replaced
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
        if self._client is not None:
            self._client.close()
        self._client = None
        self._identity = None


def _strip_scheme(endpoint: str) -> str:
    """crictl-style `unix:///run/x.sock` or a plain path -> the path."""
    return endpoint.removeprefix("unix://")
