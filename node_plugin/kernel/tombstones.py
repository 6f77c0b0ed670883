"""Tombstones: veth pairs a DEL took out of service, left for a reaper to unregister.

Unregistering a veth pair is most of a DEL: RTM_DELLINK returns only after the kernel's
RCU barrier for the removed devices, 10-30 ms here, against well under a millisecond for
everything else DEL does. A resident server (node_plugin.server) need not make the runtime
wait for it. Its DEL does synchronously what a runtime or a following ADD can observe:

* the host end leaves the bridge, goes down and is marked with GROUP (a link group of its
  own), renamed `cwtomb<hex>` and given an alias naming the attachment;
* the sandbox end goes down, loses its addresses and is renamed `cwtomb<hex>` (also in
  GROUP), so CNI_IFNAME is free at once;

then it releases the lease and the rules and answers. The pair carries no traffic from
the first step on (no carrier, no bridge port). A reaper unregisters the tombstones later:
RTM_DELLINK by IFLA_GROUP deletes every link of the group in a namespace in one kernel
batch, so one RCU wait covers every pair buried meanwhile.

The mark is what makes this crash safe: a link in GROUP is dead by definition, so anyone
may delete it at any time (the reaper, a restarting server, GC of either plugin path), and
the host end carries the mark before the sandbox end is touched.
"""

from __future__ import annotations

import errno
import logging
import secrets
from collections.abc import Callable

from node_plugin.cni.errors import INTERNAL, CniError
from node_plugin.kernel import netlink
from node_plugin.kernel.rtnl import Rtnl, RtnlError

log = logging.getLogger(__name__)

GROUP = 0x63777462  # ASCII "cwtb": cniwarden tombstone (`ip link show group 0x63777462`)
PREFIX = "cwtomb"
_GONE = (errno.ENODEV, errno.ENOENT)


def _tolerant(action: str, step: Callable[[], None]) -> bool:
    """Runs one netlink step; False when the link is already gone (a reaper got there)."""
    try:
        step()
    except RtnlError as exc:
        if exc.code in _GONE:
            return False
        raise netlink.failure(action, exc) from None
    return True


def _rename(
    ipr: Rtnl,
    index: int,
    first_choice: str,
    action: str,
    *,
    group: int | None = None,
    alias: str | None = None,
) -> bool:
    """Renames to a free tombstone name (random after a clash); False if the link is gone."""
    name = first_choice
    for _ in range(8):
        try:
            ipr.set_link(index, name=name, group=group, alias=alias)
            return True
        except RtnlError as exc:
            if exc.code in _GONE:
                return False
            if exc.code != errno.EEXIST:
                raise netlink.failure(action, exc) from None
        name = PREFIX + secrets.token_hex(4)
    raise CniError(INTERNAL, f"{action}: no free tombstone name")


def host_end(host: Rtnl, sandbox_fd: int, cont: netlink.Link) -> netlink.Link | None:
    """The host end of the sandbox veth `cont`, if it lives in `host`'s namespace.

    Indices alone prove nothing (every sandbox's eth0 tends to be index 2): the host link
    must be a veth whose peer is `cont`'s index in the namespace of `sandbox_fd`.
    """
    if cont.kind != "veth" or not cont.peer_index:
        return None
    peer = netlink.get_index(host, cont.peer_index)
    if peer is None or peer.kind != "veth" or peer.peer_index != cont.index:
        return None
    if peer.link_netnsid is None:
        return None
    try:
        sandbox_id = host.nsid(sandbox_fd)
    except RtnlError as exc:
        raise netlink.failure("look up the sandbox's namespace id", exc) from None
    return peer if sandbox_id == peer.link_netnsid else None


def bury(
    host: Rtnl,
    sandbox: Rtnl,
    sandbox_fd: int,
    cont: netlink.Link,
    *,
    addresses: list[netlink.IPInterface],
    owner: str,
) -> bool:
    """Takes the veth pair of `cont` out of service and marks it for the reaper.

    False (nothing changed) when `cont` is not a veth whose peer is in `host`'s namespace:
    the caller then deletes it synchronously, as the standalone plugin does.
    """
    peer = host_end(host, sandbox_fd, cont)
    if peer is None:
        return False
    what = f"host veth {peer.name}"
    # One request: marked first (the kernel applies the group before flags and master),
    # so that from here on the pair is reapable even if this process dies.
    if not _tolerant(
        f"retire {what}",
        lambda: host.set_link(peer.index, group=GROUP, up=False, master=0),
    ):
        return True
    host_name = PREFIX + (peer.name[4:] if peer.name.startswith("veth") else secrets.token_hex(4))
    alias = f"cniwarden tombstone of {owner}"
    if not _rename(host, peer.index, host_name[:15], f"rename {what}", alias=alias):
        return True
    ifname = cont.name
    if not _tolerant(f"set {ifname} down", lambda: sandbox.set_link(cont.index, up=False)):
        return True
    for address in addresses:  # IPv6 ones already went with "down"; IPv4 ones stay
        try:
            sandbox.del_addr(cont.index, address)
        except RtnlError as exc:
            if exc.code not in (*_GONE, errno.EADDRNOTAVAIL):
                raise netlink.failure(f"remove {address} from {ifname}", exc) from None
    _rename(
        sandbox,
        cont.index,
        PREFIX + secrets.token_hex(4),
        f"rename {ifname} in the sandbox",
        group=GROUP,
    )
    return True


def reap(ipr: Rtnl) -> bool:
    """Unregisters every tombstone in the socket's namespace; False when there was none.

    Blocks for the kernel's RCU barrier (10-30 ms), once for all of them.
    """
    try:
        ipr.del_group(GROUP)
        return True
    except RtnlError as exc:
        if exc.code in _GONE:
            return False
        if exc.code != errno.EOPNOTSUPP:
            raise netlink.failure("delete tombstones", exc) from None
    # A device that cannot be deleted was put into our group by hand: ours one at a time.
    found = False
    for link in listed(ipr):
        if link.kind == "veth" and link.name.startswith(PREFIX):
            found = True
            netlink.delete(ipr, link.index, f"tombstone {link.name}")
    return found


def listed(ipr: Rtnl) -> list[netlink.Link]:
    """The tombstones in the socket's namespace."""
    try:
        return [netlink.link_of(m) for m in ipr.links() if m.group == GROUP]
    except RtnlError as exc:
        raise netlink.failure("list tombstones", exc) from None
