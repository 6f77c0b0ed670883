"""An in-process CRI server on a unix socket under a test's host root: answers
Version, Status and ListPodSandbox from what the test sets, so the CRI client
(node/cri.py) is exercised over real gRPC without a runtime. The integration
tests ask real containerd (test_runtime_truth.py, test_leak_repair.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cni_operator.cri import cri_runtime_v1_pb2 as cri

SOCKET = "/run/containerd/containerd.sock"


@dataclass
class FakeRuntime:
    """What the fake runtime answers; `stall` makes ListPodSandbox hang (until released)."""

    name: str = "containerd"
    version: str = "1.7.24"
    sandboxes: list[str] = field(default_factory=list)
    stall: threading.Event | None = None
    list_calls: int = 0

    def version_call(self, request: cri.VersionRequest, context: Any) -> cri.VersionResponse:
        return cri.VersionResponse(
            version="0.1.0",
            runtime_name=self.name,
            runtime_version=self.version,
            runtime_api_version="v1",
        )

    def status_call(self, request: cri.StatusRequest, context: Any) -> cri.StatusResponse:
        ready = cri.RuntimeCondition(type="NetworkReady", status=True)
        return cri.StatusResponse(status=cri.RuntimeStatus(conditions=[ready]))

    def list_call(
        self, request: cri.ListPodSandboxRequest, context: Any
    ) -> cri.ListPodSandboxResponse:
        self.list_calls += 1
        if self.stall is not None:
            self.stall.wait(30)
        return cri.ListPodSandboxResponse(
            items=[cri.PodSandbox(id=sandbox) for sandbox in self.sandboxes]
        )


@contextlib.contextmanager
def fake_runtime(host_root: Path, runtime: FakeRuntime) -> Iterator[FakeRuntime]:
    """Serve `runtime` at <host_root>/run/containerd/containerd.sock until the block ends."""
    socket = host_root / SOCKET.lstrip("/")
    socket.parent.mkdir(parents=True, exist_ok=True)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Version": grpc.unary_unary_rpc_method_handler(
            runtime.version_call,
            request_deserializer=cri.VersionRequest.FromString,
            response_serializer=cri.VersionResponse.SerializeToString,
        ),
        "Status": grpc.unary_unary_rpc_method_handler(
            runtime.status_call,
            request_deserializer=cri.StatusRequest.FromString,
            response_serializer=cri.StatusResponse.SerializeToString,
        ),
        "ListPodSandbox": grpc.unary_unary_rpc_method_handler(
            runtime.list_call,
            request_deserializer=cri.ListPodSandboxRequest.FromString,
            response_serializer=cri.ListPodSandboxResponse.SerializeToString,
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", handlers),)
    )
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        yield runtime
    finally:
        if runtime.stall is not None:
            runtime.stall.set()
        server.stop(grace=None).wait(10)
        socket.unlink(missing_ok=True)
