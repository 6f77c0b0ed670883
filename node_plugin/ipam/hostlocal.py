"""cniwarden-host-local: the reference host-local IPAM's behaviour over the same disk store.

Verbs take the validated `CmdArgs`; `allocate`/`release` are also called in-process
by cniwarden-bridge (no second interpreter). Allocation is transactional: if any
range set cannot be served, everything reserved by this call is released.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from node_plugin.cni.errors import (
    ADDRESS_UNAVAILABLE,
    CHECK_FAILED,
    DUPLICATE_ALLOCATION,
    IO_FAILURE,
    NOT_AVAILABLE,
    RANGE_EXHAUSTED,
    CniError,
)
from node_plugin.cni.result import DNS, IPConfig, Result
from node_plugin.cni.skel import CmdArgs
from node_plugin.ipam import config as hostlocal_config
from node_plugin.ipam.allocator import IPAddress, RangeSet, candidates
from node_plugin.ipam.config import IpamConfig
from node_plugin.ipam.store import Lease, Store

log = logging.getLogger(__name__)


def add(args: CmdArgs) -> Result:
    return allocate(args, load(args))


def delete(args: CmdArgs) -> None:
    release(args, load(args))


def check(args: CmdArgs, other_args: tuple[str, ...] = ()) -> None:
    conf = load(args, other_args)
    prev = _prev_result(args)
    store = Store(conf.data_dir, conf.network)
    with store.locked(create=False):
        leases = store.leases()
    mine = {ip for ip, lease in leases.items() if lease.owned_by(args.container_id, args.ifname)}
    if not mine:
        mine = {
            ip
            for ip, lease in leases.items()
            if lease.ifname is None and lease.container_id == args.container_id.strip()
        }
    if not mine:
        raise CniError(
            CHECK_FAILED,
            f"host-local: no address of network {conf.network!r} is held by container "
            f"{args.container_id} ifname {args.ifname}",
        )
    if prev is not None:
        for ipc in prev.ips:
            ip = ipc.address.ip
            if any(rs.contains(ip) for rs in conf.range_sets) and ip not in mine:
                raise CniError(
                    CHECK_FAILED,
                    f"host-local: {ip} from prevResult is not leased to container "
                    f"{args.container_id} ifname {args.ifname} in network {conf.network!r}",
                )


def gc(args: CmdArgs, other_args: tuple[str, ...] = ()) -> None:
    conf = load(args, other_args)
    keep = args.valid_attachments()
    keep_ids = {cid for cid, _ in keep}
    errors: list[str] = []
    store = Store(conf.data_dir, conf.network)
    with store.locked(create=False):
        if not store.exists():
            return
        store.remove_temp_files()
        for ip, lease in store.leases().items():
            if lease.ifname is None:
                stale = lease.container_id not in keep_ids
            else:
                stale = (lease.container_id, lease.ifname) not in keep
            if stale:
                log.info("gc: releasing %s held by %s/%s", ip, lease.container_id, lease.ifname)
                try:
                    store.release(ip)
                except CniError as err:  # keep going: release everything else we can
                    errors.append(err.msg)
    if errors:
        raise CniError(IO_FAILURE, f"GC of network {conf.network!r} incomplete", "; ".join(errors))


def status(args: CmdArgs, other_args: tuple[str, ...] = ()) -> None:
    conf = load(args, other_args)
    _check_writable(conf.data_dir)
    store = Store(conf.data_dir, conf.network)
    with store.locked(create=False):
        leases = store.leases()
    for idx, rs in enumerate(conf.range_sets):
        used = sum(1 for ip in leases if rs.contains(ip) and not rs.is_gateway(ip))
        if used >= rs.allocatable():
            raise CniError(
                NOT_AVAILABLE,
                f"no IP addresses available in network {conf.network!r} range set {idx} ({rs})",
                f"{used} of {rs.allocatable()} addresses leased",
            )


def load(args: CmdArgs, other_args: tuple[str, ...] = ()) -> IpamConfig:
    return hostlocal_config.load(args.config, args.args, args.version, other_args)


def allocate(args: CmdArgs, conf: IpamConfig) -> Result:
    result = Result()
    if conf.resolv_conf:
        result.dns = parse_resolv_conf(conf.resolv_conf)
    store = Store(conf.data_dir, conf.network)
    requested = list(conf.requested)
    reserved: list[IPAddress] = []
    with store.locked():
        try:
            leases = store.leases()
            for idx, rs in enumerate(conf.range_sets):
                wanted = next((ip for ip in requested if rs.contains(ip)), None)
                if wanted is not None:
                    requested.remove(wanted)
                    ip = _reserve_requested(store, args, conf, idx=idx, rs=rs, ip=wanted)
                else:
                    ip = _reserve_next(store, args, conf, idx=idx, rs=rs, leases=leases)
                reserved.append(ip)
                r = rs.range_for(ip)
                assert r is not None
                result.ips.append(
                    IPConfig(
                        address=ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"),
                        gateway=r.gateway,
                    )
                )
            if requested:
                raise CniError(
                    ADDRESS_UNAVAILABLE,
                    f"failed to allocate all requested IPs in network {conf.network!r}: "
                    + " ".join(str(ip) for ip in requested),
                    "each requested address must lie in one of the configured range sets",
                )
        except BaseException:
            for ip in reserved:
                store.release(ip)
            raise
    result.routes = list(conf.routes)
    return result


def release(args: CmdArgs, conf: IpamConfig) -> list[IPAddress]:
    store = Store(conf.data_dir, conf.network)
    with store.locked(create=False):
        if not store.exists():
            return []
        return store.release_owner(args.container_id, args.ifname)


def _reserve_requested(
    store: Store, args: CmdArgs, conf: IpamConfig, *, idx: int, rs: RangeSet, ip: IPAddress
) -> IPAddress:
    if rs.is_gateway(ip):
        raise CniError(
            ADDRESS_UNAVAILABLE,
            f"requested IP {ip} is the gateway of network {conf.network!r} range set {idx}",
        )
    if not store.reserve(ip, args.container_id, args.ifname, idx):
        raise CniError(
            ADDRESS_UNAVAILABLE,
            f"requested IP address {ip} is not available in network {conf.network!r} "
            f"range set {idx} ({rs})",
        )
    return ip


def _reserve_next(
    store: Store,
    args: CmdArgs,
    conf: IpamConfig,
    *,
    idx: int,
    rs: RangeSet,
    leases: dict[IPAddress, Lease],
) -> IPAddress:
    for ip, lease in leases.items():
        if rs.contains(ip) and lease.owned_by(args.container_id, args.ifname):
            raise CniError(
                DUPLICATE_ALLOCATION,
                f"{ip} is already allocated to container {args.container_id} ifname "
                f"{args.ifname} in network {conf.network!r}; duplicate allocation is not allowed",
            )
    for ip, _range in candidates(rs, store.last_reserved(idx)):
        if ip in leases:
            continue
        if store.reserve(ip, args.container_id, args.ifname, idx):
            return ip
    raise CniError(
        RANGE_EXHAUSTED,
        f"no IP addresses available in network {conf.network!r} range set {idx} ({rs})",
        f"all {rs.allocatable()} addresses are leased; see {store.dir}",
    )


def parse_resolv_conf(path: str) -> DNS:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read resolvConf {path!r}: {exc.strerror}") from None
    dns = DNS()
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver" and values:
            dns.nameservers.append(values[0])
        elif key == "domain" and values:
            dns.domain = values[0]
        elif key == "search":
            dns.search.extend(values)
        elif key == "options":
            dns.options.extend(values)
    return dns


def _prev_result(args: CmdArgs) -> Result | None:
    raw = args.config.get("prevResult")
    if raw is None:
        return None
    return Result.from_json(raw, args.version)


def _check_writable(data_dir: str) -> None:
    path = Path(data_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    if not os.access(path, os.W_OK):
        raise CniError(NOT_AVAILABLE, f"host-local dataDir {data_dir!r} is not writable")
