"""Where apply → Ready goes at scale: when each node's report said "Applied", and when the
controller's status counted it.

A watch of the CNINodeStates and one of the CNINetworks, each event stamped on the
bench's monotonic clock as it arrives, so the rollout bench can split apply → Ready into
the agents' part (apply → the last node's report at the new generation) and the
controller's part (that report → the status that counts every node). The watches replace
polling with `kubectl get` (a process every 50 ms, which took CPU from the agents being
measured).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config
from kubernetes import watch as kube_watch

GROUP, VERSION = "cniwarden.io", "v1alpha1"


def custom_api(kubeconfig: Path) -> Any:
    configuration = kube_client.Configuration()
    kube_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return kube_client.CustomObjectsApi(kube_client.ApiClient(configuration))


class Timeline:
    """Arrival times of CNINodeState and CNINetwork events, one thread per watch."""

    def __init__(self, kubeconfig: Path) -> None:
        self.api = custom_api(kubeconfig)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.reports: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.networks: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._watches: list[kube_watch.Watch] = []
        self._threads = [
            threading.Thread(target=self._follow, args=(p, s), daemon=True, name=f"watch-{p}")
            for p, s in (("cninodestates", self.reports), ("cninetworks", self.networks))
        ]

    def __enter__(self) -> Timeline:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for w in self._watches:
            w.stop()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(timeout=15)

    def _follow(self, plural: str, into: dict[str, list[tuple[float, dict[str, Any]]]]) -> None:
        """List, then watch from the list's resourceVersion; again after any error, until
        stopped. Every read has a server-side timeout, so stop() is never waited on long."""
        while not self._stop.is_set():
            w = kube_watch.Watch()  # type: ignore[no-untyped-call]
            self._watches.append(w)
            try:
                listed = self.api.list_cluster_custom_object(
                    GROUP, VERSION, plural, _request_timeout=30
                )
                stamp = time.monotonic()
                with self.changed:
                    for item in listed.get("items") or []:
                        name = item["metadata"]["name"]
                        into.setdefault(name, []).append((stamp, item))
                    self.changed.notify_all()
                for event in w.stream(  # type: ignore[no-untyped-call]
                    self.api.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    plural,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=20,
                    _request_timeout=30,
                ):
                    stamp = time.monotonic()
                    item = event["object"]
                    with self.changed:
                        into.setdefault(item["metadata"]["name"], []).append((stamp, item))
                        self.changed.notify_all()
                    if self._stop.is_set():
                        return
            except Exception as error:  # a bench keeps watching; the error is kept
                self.errors.append(f"{plural}: {error}")
                self._stop.wait(0.5)

    def wait_for(self, predicate: Any, timeout: float) -> float | None:
        """The monotonic time at which `predicate(self)` first held, or None at timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                if predicate(self):
                    return time.monotonic()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 0.5))

    def network_status(self, name: str) -> dict[str, Any]:
        events = self.networks.get(name) or []
        return dict((events[-1][1].get("status") or {}) if events else {})

    def first_applied(self, node: str, network: str, generation: int) -> float | None:
        """When the node's report first said `network` Applied at `generation`."""
        for stamp, item in self.reports.get(node) or []:
            for entry in (item.get("status") or {}).get("networks") or []:
                if (
                    entry.get("name") == network
                    and entry.get("state") == "Applied"
                    and entry.get("appliedGeneration") == generation
                ):
                    return stamp
        return None

    def status_writes(self, network: str, since: float) -> list[tuple[float, int]]:
        """(time, nodesReady) of each status the controller wrote for `network`."""
        out: list[tuple[float, int]] = []
        for stamp, item in self.networks.get(network) or []:
            if stamp >= since:
                ready = int((item.get("status") or {}).get("nodesReady") or 0)
                if not out or out[-1][1] != ready:
                    out.append((stamp, ready))
        return out
