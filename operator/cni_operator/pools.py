"""IP pool pressure and leaked leases: pure arithmetic over what a node holds.

A *pool* is one host-local IPAM section of a config cniwarden applied; each of its
range sets has a size (allocatable addresses) and the leases in it. A lease is
*leaked* when the runtime no longer has its sandbox (CRI `ListPodSandbox`) and it is
older than the grace period: the grace covers a sandbox whose ADD is in flight,
which containerd only lists once RunPodSandbox has finished (kubelet gives up on a
RunPodSandbox after its 2 min runtime-request-timeout, hence the 300 s default).
When the runtime cannot be asked, nothing is leaked: unknown is never "gone".

No disk, no subprocess: `node/pools.py` reads the leases and `node/sandboxes.py`
asks the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node_plugin.cni.errors import CniError
from node_plugin.ipam import config as hostlocal_config
from node_plugin.ipam.allocator import IPAddress, RangeSet

HOST_LOCAL_TYPES = frozenset({"host-local", "cniwarden-host-local"})
DEFAULT_PRESSURE_THRESHOLD = 90
DEFAULT_LEASE_GRACE_SECONDS = 300
MIN_LEASE_GRACE_SECONDS = 60


@dataclass(frozen=True)
class HostLocalPool:
    """One host-local section of a managed conflist: where its leases live, its ranges."""

    network: str  # the CNINetwork (manifest key)
    lease_network: str  # the CNI network name: the lease directory's name
    data_dir: str  # as the node names it
    range_sets: tuple[RangeSet, ...]


@dataclass(frozen=True)
class PoolLease:
    ip: IPAddress
    container_id: str
    ifname: str | None
    age_seconds: float


@dataclass(frozen=True)
class RangeSetUsage:
    pool: HostLocalPool
    set_index: int
    size: int
    used: int
    leaked: tuple[PoolLease, ...] | None  # None: the runtime could not be asked

    @property
    def percent(self) -> int:
        """Whole percent, rounded up: 99.5 % full is not "99 %, below a 100 % threshold"."""
        if self.size <= 0:
            return 100
        return -(-self.used * 100 // self.size)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "network": self.pool.network,
            "leaseNetwork": self.pool.lease_network,
            "rangeSet": self.set_index,
            "ranges": str(self.pool.range_sets[self.set_index]),
            "size": self.size,
            "used": self.used,
            "percent": self.percent,
        }
        if self.leaked is None:
            out["leakCheck"] = "RuntimeUnreachable"
        else:
            out["leakCheck"] = "Done"
            out["leaked"] = len(self.leaked)
            out["leakedLeases"] = [
                {"ip": str(lease.ip), "containerID": lease.container_id[:64]}
                for lease in self.leaked[:10]
            ]
        return out


class PoolConfigError(ValueError):
    """A managed config's host-local section that cannot be read as ranges."""


def host_local_pools(network: str, conflist: bytes) -> list[HostLocalPool]:
    """The host-local sections of one conflist, parsed by the plugin's own config code
    (so the ranges are exactly those the plugin allocates from)."""
    try:
        doc = json.loads(conflist)
    except ValueError as error:
        raise PoolConfigError(f"network {network}: config is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise PoolConfigError(f"network {network}: config is not a JSON object")
    name = doc.get("name")
    version = doc.get("cniVersion") or "1.0.0"
    pools: list[HostLocalPool] = []
    for index, plugin in enumerate(doc.get("plugins") or []):
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if not isinstance(ipam, dict) or ipam.get("type") not in HOST_LOCAL_TYPES:
            continue
        try:
            conf = hostlocal_config.load({"name": name, "ipam": ipam}, "", str(version))
        except CniError as error:
            raise PoolConfigError(
                f"network {network}: plugins[{index}].ipam: {error.msg}"
            ) from None
        pools.append(HostLocalPool(network, conf.network, conf.data_dir, conf.range_sets))
    return pools


def is_leaked(lease: PoolLease, live_sandboxes: frozenset[str], grace_seconds: float) -> bool:
    """Gone from the runtime and old enough that no ADD of it can be in flight."""
    return lease.container_id not in live_sandboxes and lease.age_seconds >= grace_seconds


def pool_usage(
    pool: HostLocalPool,
    leases: Iterable[PoolLease],
    live_sandboxes: frozenset[str] | None,
    grace_seconds: float,
) -> list[RangeSetUsage]:
    """Per range set: leases inside it (the gateway is never leased) and the leaked ones."""
    held = list(leases)
    out = []
    for index, range_set in enumerate(pool.range_sets):
        mine = [
            lease
            for lease in held
            if range_set.contains(lease.ip) and not range_set.is_gateway(lease.ip)
        ]
        leaked = (
            None
            if live_sandboxes is None
            else tuple(
                sorted(
                    (lease for lease in mine if is_leaked(lease, live_sandboxes, grace_seconds)),
                    key=lambda lease: lease.ip,
                )
            )
        )
        out.append(RangeSetUsage(pool, index, range_set.allocatable(), len(mine), leaked))
    return out


def spec_thresholds(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(pressureThreshold %, lease grace seconds) of a CNINetwork spec dict, defaulted."""
    ipam = spec.get("ipam") if isinstance(spec.get("ipam"), dict) else {}
    assert isinstance(ipam, dict)
    threshold = ipam.get("pressureThreshold", DEFAULT_PRESSURE_THRESHOLD)
    grace = ipam.get("leaseGraceSeconds", DEFAULT_LEASE_GRACE_SECONDS)
    if not isinstance(threshold, int) or not 1 <= threshold <= 100:
        threshold = DEFAULT_PRESSURE_THRESHOLD
    if not isinstance(grace, int) or grace < MIN_LEASE_GRACE_SECONDS:
        grace = DEFAULT_LEASE_GRACE_SECONDS
    return threshold, grace


@dataclass(frozen=True)
class NodePressure:
    node: str
    network: str
    ranges: str
    used: int
    size: int
    percent: int


def fullest(reports: Mapping[str, Mapping[str, Any]], network: str) -> list[NodePressure]:
    """Every node's fullest range set of `network`, fullest node first."""
    out = []
    for node, report in reports.items():
        best: NodePressure | None = None
        for item in report.get("ipPools") or []:
            if item.get("network") != network:
                continue
            try:
                found = NodePressure(
                    node,
                    network,
                    str(item.get("ranges", "")),
                    int(item["used"]),
                    int(item["size"]),
                    int(item["percent"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if best is None or found.percent > best.percent:
                best = found
        if best is not None:
            out.append(best)
    return sorted(out, key=lambda p: (-p.percent, p.node))
