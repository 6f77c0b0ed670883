"""IPAM for the bridge: cniwarden-host-local in-process, anything else delegated by exec."""

from __future__ import annotations

import logging

from node_plugin.cni.errors import INCOMPATIBLE_VERSION, INVALID_ENV, UNKNOWN_CONTAINER, CniError
from node_plugin.cni.result import Result
from node_plugin.cni.skel import CmdArgs
from node_plugin.ipam import delegate, hostlocal
from node_plugin.ipam.config import IpamConfig

log = logging.getLogger(__name__)
IN_PROCESS = "cniwarden-host-local"
# CNI_ARGS keys the bridge owns; the in-process host-local must not reject them.
BRIDGE_ARGS = ("MAC",)


def preload(args: CmdArgs, ipam_type: str) -> IpamConfig | None:
    """Validate an in-process IPAM config before the bridge changes anything on the node."""
    return hostlocal.load(args, BRIDGE_ARGS) if ipam_type == IN_PROCESS else None


def add(args: CmdArgs, ipam_type: str, preloaded: IpamConfig | None = None) -> Result:
    if ipam_type == IN_PROCESS:
        return hostlocal.allocate(args, preloaded or hostlocal.load(args, BRIDGE_ARGS))
    return delegate.add(args, ipam_type)


def delete(args: CmdArgs, ipam_type: str) -> None:
    if ipam_type == IN_PROCESS:
        hostlocal.release(args, hostlocal.load(args, BRIDGE_ARGS))
    else:
        delegate.invoke(args, ipam_type, "DEL")


def check(args: CmdArgs, ipam_type: str) -> None:
    if ipam_type == IN_PROCESS:
        hostlocal.check(args, BRIDGE_ARGS)
    else:
        delegate.invoke(args, ipam_type, "CHECK")


def gc(args: CmdArgs, ipam_type: str) -> None:
    if ipam_type == IN_PROCESS:
        hostlocal.gc(args, BRIDGE_ARGS)
        return
    try:
        delegate.invoke(args, ipam_type, "GC")
    except CniError as err:
        if _predates_verb(err):
            log.info("IPAM plugin %s does not implement GC: %s", ipam_type, err.msg)
            return
        raise


def status(args: CmdArgs, ipam_type: str) -> None:
    if ipam_type == IN_PROCESS:
        hostlocal.status(args, BRIDGE_ARGS)
        return
    try:
        delegate.invoke(args, ipam_type, "STATUS")
    except CniError as err:
        if _predates_verb(err):
            log.info("IPAM plugin %s does not implement STATUS: %s", ipam_type, err.msg)
            return
        raise


def _predates_verb(err: CniError) -> bool:
    """A delegate older than CNI 1.1.0 rejects GC/STATUS: incompatible version, unknown
    command, or (reference 1.1.1's skel) "missing containerID" since GC/STATUS send none."""
    return err.code in (INCOMPATIBLE_VERSION, UNKNOWN_CONTAINER) or (
        err.code == INVALID_ENV and "CNI_COMMAND" in err.msg
    )
