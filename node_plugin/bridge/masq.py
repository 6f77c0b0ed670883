"""ipMasq with the iptables or nftables backend, named per attachment like the reference.

Setup is one transaction per family (iptables-restore --noflush) or one nft
script; teardown removes both backends' rules (the attachment may have been made
by another version or backend), and GC removes this network's rules whose
attachment is not in the keep-list (iptables too, which the reference cannot).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

from node_plugin.bridge import masq_names as names
from node_plugin.cni.errors import INTERNAL, INVALID_CONFIG, CniError
from node_plugin.kernel.netfilter import available, check, nft_apply, nft_json, run

log = logging.getLogger(__name__)
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_IPT = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}


def choose_backend(configured: str | None) -> str:
    """The configured backend, else iptables unless only nft is installed (the reference's rule)."""
    if configured:
        return configured
    if not available("iptables-restore") and available("nft"):
        return "nftables"
    return "iptables"


def setup(
    backend: str, network: str, ifname: str, container_id: str, addresses: Sequence[IPInterface]
) -> None:
    if backend == "iptables":
        for family in (4, 6):
            fam = [a for a in addresses if a.version == family]
            if not fam:
                continue
            ipt, restore = _IPT[family]
            what = f"ipMasq: {ipt}"
            existing = check(run([ipt, "-w", "-t", "nat", "-S", "POSTROUTING"], what=what), what)
            script = names.iptables_restore_script(network, container_id, fam, existing)
            what = f"ipMasq: {restore}"
            check(run([restore, "-w", "--noflush"], script, what=what), what, script)
    elif backend == "nftables":
        listing = _nft_masq_chain()
        stale = [
            h
            for h, _ in names.nft_rules_with_prefix(
                listing, names.nft_instance_hash(network, ifname, container_id)
            )
        ]
        script = names.nft_setup_script(network, ifname, container_id, addresses, stale)
        nft_apply(script, "ipMasq: nft")
    else:
        raise CniError(INVALID_CONFIG, f"invalid network config: ipMasqBackend: {backend!r}")


def teardown(
    network: str, ifname: str, container_id: str, families: Iterable[int] = (4, 6)
) -> None:
    errors: list[str] = []
    chain = names.iptables_chain(network, container_id)
    for family in sorted(set(families)):
        ipt, restore = _IPT[family]
        if not available(ipt):
            continue
        try:
            listing = check(run([ipt, "-w", "-t", "nat", "-S"], what=ipt), ipt)
            script = names.iptables_teardown_script(chain, listing)
            if script:
                check(run([restore, "-w", "--noflush"], script, what=restore), restore, script)
        except CniError as exc:
            errors.append(exc.msg)
    if available("nft"):
        try:
            nft_listing = _nft_masq_chain()
            prefix = names.nft_instance_hash(network, ifname, container_id)
            handles = [h for h, _ in names.nft_rules_with_prefix(nft_listing, prefix)]
            _nft_delete(handles)
        except CniError as exc:
            errors.append(exc.msg)
    if errors:
        raise CniError(INTERNAL, "ipMasq teardown: " + "; ".join(errors))


def gc(network: str, keep: set[tuple[str, str]]) -> list[str]:
    """Remove this network's masquerade rules not owned by a kept attachment; returns errors."""
    errors: list[str] = []
    keep_ids = {cid for cid, _ in keep}
    for family in (4, 6):
        ipt, restore = _IPT[family]
        if not available(ipt):
            continue
        try:
            listing = check(run([ipt, "-w", "-t", "nat", "-S"], what=ipt), ipt)
            for chain, cid in names.iptables_chains_for_network(network, listing).items():
                if cid in keep_ids:
                    continue
                script = names.iptables_teardown_script(chain, listing)
                if script:
                    log.info("gc: removing %s masquerade chain %s of %s", ipt, chain, cid)
                    check(run([restore, "-w", "--noflush"], script, what=restore), restore)
        except CniError as exc:
            errors.append(exc.msg)
    if available("nft"):
        try:
            nft_listing = _nft_masq_chain()
            valid = {names.nft_comment(network, ifname, cid) for cid, ifname in keep}
            rules = names.nft_rules_with_prefix(nft_listing, names.nft_network_hash(network))
            _nft_delete([h for h, comment in rules if comment not in valid])
        except CniError as exc:
            errors.append(exc.msg)
    return errors


def _nft_masq_chain() -> object:
    return nft_json(["list", "chain", "inet", names.NFT_TABLE, names.NFT_CHAIN], "ipMasq: nft list")


def _nft_delete(handles: list[int]) -> None:
    if not handles:
        return
    t = f"inet {names.NFT_TABLE} {names.NFT_CHAIN}"
    nft_apply("".join(f"delete rule {t} handle {h}\n" for h in handles), "ipMasq: nft delete")
