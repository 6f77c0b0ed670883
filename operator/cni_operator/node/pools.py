"""Pool usage and leak repair on the node: the managed configs' host-local stores.

Reads the configs the manifest names (so it works without the API server, for the
doctor and `cniwarden gc`), the leases through the plugins' own store, and their age
from the lease file's mtime. Releasing happens under the store's lock, exactly as
the plugin's GC does, after re-reading the leases: a lease taken or renewed since
the listing is judged again, never released on old information.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cni_operator.node.manifest import Manifest
from cni_operator.node.paths import HostPaths
from cni_operator.node.sandboxes import SandboxListing
from cni_operator.pools import (
    HostLocalPool,
    PoolConfigError,
    PoolLease,
    RangeSetUsage,
    host_local_pools,
    is_leaked,
    pool_usage,
    spec_thresholds,
)
from cni_operator.problems import WARNING, Problem
from node_plugin.cni.errors import CniError
from node_plugin.ipam.store import Store, read_lease_dir

log = logging.getLogger("cniwarden.pools")


def store_dir(paths: HostPaths, pool: HostLocalPool) -> Path:
    """The lease directory under the host root (a dataDir never escapes the root)."""
    data_dir = pool.data_dir if pool.data_dir.startswith("/") else "/" + pool.data_dir
    if ".." in Path(data_dir).parts:
        raise PoolConfigError(f"network {pool.network}: dataDir {pool.data_dir!r} has '..'")
    return paths.root / data_dir.lstrip("/")


def _leases_with_age(directory: Path, now: float) -> list[PoolLease]:
    found = read_lease_dir(directory)
    out = []
    for ip, lease in found.leases.items():
        try:
            mtime = os.stat(directory / str(ip)).st_mtime
        except FileNotFoundError:
            continue  # released since the listing
        out.append(PoolLease(ip, lease.container_id, lease.ifname, max(0.0, now - mtime)))
    return out


@dataclass
class PoolScan:
    usage: list[RangeSetUsage] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    listing: SandboxListing | None = None


def managed_pools(paths: HostPaths, manifest: Manifest) -> tuple[list[HostLocalPool], list[str]]:
    pools: list[HostLocalPool] = []
    errors: list[str] = []
    for network, managed in sorted(manifest.networks.items()):
        try:
            raw = (paths.conf_dir / managed.file).read_bytes()
            pools.extend(host_local_pools(network, raw))
        except FileNotFoundError:
            continue  # ManagedFileMissing says it already
        except (OSError, PoolConfigError) as error:
            errors.append(str(error))
    return pools, errors


def scan_pools(
    paths: HostPaths, manifest: Manifest, listing: SandboxListing | None, now: float | None = None
) -> PoolScan:
    """Usage of every managed pool; leaked leases when `listing` has the live ids."""
    now = time.time() if now is None else now
    scan = PoolScan(listing=listing)
    pools, errors = managed_pools(paths, manifest)
    for message in errors:
        scan.problems.append(
            Problem("PoolUnreadable", WARNING, message, "Check the CNINetwork's ipam section.")
        )
    live = None if listing is None else listing.ids
    for pool in pools:
        _, grace = spec_thresholds(manifest.networks[pool.network].spec)
        try:
            leases = _leases_with_age(store_dir(paths, pool) / pool.lease_network, now)
        except PoolConfigError as error:
            scan.problems.append(Problem("PoolUnreadable", WARNING, str(error), "Fix dataDir."))
            continue
        scan.usage.extend(pool_usage(pool, leases, live, grace))
    for item in scan.usage:
        threshold, grace = spec_thresholds(manifest.networks[item.pool.network].spec)
        ranges = item.pool.range_sets[item.set_index]
        where = f"network {item.pool.network} range set {item.set_index} ({ranges})"
        if item.percent >= threshold:
            scan.problems.append(
                Problem(
                    "IPPoolPressure",
                    WARNING,
                    f"{where}: {item.used} of {item.size} addresses leased ({item.percent}%, "
                    f"threshold {threshold}%)",
                    "Run `cniwarden gc` to reclaim leaked leases, move pods off this node, or "
                    "give the network a larger range.",
                )
            )
        if item.leaked:
            ips = ", ".join(str(lease.ip) for lease in item.leaked[:5])
            scan.problems.append(
                Problem(
                    "LeakedLeases",
                    WARNING,
                    f"{where}: {len(item.leaked)} lease(s) whose sandbox the runtime no longer "
                    f"has, older than {grace}s ({ips})",
                    "The agent reclaims them on its GC schedule; `cniwarden gc` does it now.",
                )
            )
    if listing is not None and listing.ids is None and scan.usage:
        scan.problems.append(
            Problem(
                "RuntimeUnreachable",
                WARNING,
                f"cannot list the runtime's sandboxes: {listing.error}; leaked leases are "
                "unknown and none is reclaimed",
                "Check the runtime (`crictl pods`) and the agent's --runtime-endpoint.",
            )
        )
    return scan


@dataclass(frozen=True)
class Reclaimed:
    network: str
    lease_network: str
    ip: str
    container_id: str


def reclaim_leaked(
    paths: HostPaths,
    manifest: Manifest,
    listing: SandboxListing,
    now: float | None = None,
    *,
    dry_run: bool = False,
) -> tuple[list[Reclaimed], list[str]]:
    """Release every leaked lease of the managed pools. Nothing when the runtime could
    not be asked, or the network's spec sets disableGC. The live ids must be listed
    before this is called: a sandbox created after the listing has a lease younger
    than the grace, so it is kept."""
    if listing.ids is None:
        return [], [f"runtime not asked ({listing.error}); nothing released"]
    live = listing.ids
    pools, errors = managed_pools(paths, manifest)
    done: list[Reclaimed] = []
    for pool in pools:
        spec = manifest.networks[pool.network].spec
        if spec.get("disableGC"):
            continue
        _, grace = spec_thresholds(spec)
        try:
            store = Store(str(store_dir(paths, pool)), pool.lease_network)
            with store.locked(create=False):
                if not store.exists():
                    continue
                clock = time.time() if now is None else now
                for lease in _leases_with_age(store.dir, clock):
                    in_range = any(rs.contains(lease.ip) for rs in pool.range_sets)
                    if not in_range or not is_leaked(lease, live, grace):
                        continue
                    if not dry_run:
                        store.release(lease.ip)
                        log.info(
                            "gc: released %s of %s (sandbox %s gone, lease %.0fs old)",
                            lease.ip,
                            pool.lease_network,
                            lease.container_id,
                            lease.age_seconds,
                        )
                    ip, owner = str(lease.ip), lease.container_id
                    done.append(Reclaimed(pool.network, pool.lease_network, ip, owner))
        except (CniError, PoolConfigError) as error:
            errors.append(str(error))
    return done, errors
