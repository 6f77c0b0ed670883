"""macspoofchk: drop frames from the host veth whose source MAC is not the container's.

Same nftables objects as the reference (table `bridge nat`, base chain PREROUTING,
chains `cni-br-iface-<containerID>-<ifname>[-mac]`, comments `macspoofchk-<ref>`),
so either implementation can tear down the other's rules.
"""

from __future__ import annotations

from typing import Any

from node_plugin.kernel.netfilter import nft_apply, nft_json

TABLE = "bridge nat"
BASE = "PREROUTING"
COMMENT_PREFIX = "macspoofchk-"


def ref_id(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def _chains(ref: str) -> tuple[str, str]:
    iface = f"cni-br-iface-{ref}"
    return iface, f"{iface}-mac"


def setup(host_ifname: str, mac: str, container_id: str, ifname: str) -> None:
    ref = ref_id(container_id, ifname)
    iface, macc = _chains(ref)
    c = f'comment "{COMMENT_PREFIX}{ref}"'
    nft_apply(
        "\n".join(
            [
                f"add table {TABLE}",
                f"add chain {TABLE} {BASE} {{ type filter hook prerouting priority -300 ; "
                "policy accept ; }",
                f"add chain {TABLE} {iface}",
                f"add chain {TABLE} {macc}",
                f"flush chain {TABLE} {iface}",
                f"flush chain {TABLE} {macc}",
                f'add rule {TABLE} {BASE} iifname "{host_ifname}" jump {iface} {c}',
                f"add rule {TABLE} {iface} jump {macc} {c}",
                f"add rule {TABLE} {macc} ether saddr {mac} return {c}",
                f"add rule {TABLE} {macc} drop {c}",
            ]
        )
        + "\n",
        "macspoofchk: nft",
    )


def teardown(container_id: str, ifname: str) -> None:
    _remove({ref_id(container_id, ifname)})


def stale_refs(host_links: set[str]) -> set[str]:
    """Refs whose PREROUTING rule matches a host veth that no longer exists."""
    listing = nft_json(["list", "chain", "bridge", "nat", BASE], "macspoofchk: nft list")
    out: set[str] = set()
    for rule in _rules(listing):
        comment = rule.get("comment", "")
        iif = _iifname(rule)
        if comment.startswith(COMMENT_PREFIX) and iif is not None and iif not in host_links:
            out.add(comment[len(COMMENT_PREFIX) :])
    return out


def remove(refs: set[str]) -> None:
    _remove(refs)


def _remove(refs: set[str]) -> None:
    if not refs:
        return
    listing = nft_json(["list", "table", "bridge", "nat"], "macspoofchk: nft list")
    if listing is None:
        return
    chains = {
        item["chain"]["name"]
        for item in listing.get("nftables", [])
        if isinstance(item, dict) and "chain" in item
    }
    lines = []
    for rule in _rules(listing):
        comment = rule.get("comment", "")
        if rule.get("chain") == BASE and comment[len(COMMENT_PREFIX) :] in refs:
            lines.append(f"delete rule {TABLE} {BASE} handle {rule['handle']}")
    for ref in refs:
        iface, macc = _chains(ref)
        for chain in (iface, macc):  # the jump into -mac must go before its chain
            if chain in chains:
                lines.append(f"flush chain {TABLE} {chain}")
        for chain in (iface, macc):
            if chain in chains:
                lines.append(f"delete chain {TABLE} {chain}")
    if lines:
        nft_apply("\n".join(lines) + "\n", "macspoofchk teardown: nft")


def _rules(listing: dict[str, Any] | None) -> list[dict[str, Any]]:
    if listing is None:
        return []
    return [
        item["rule"]
        for item in listing.get("nftables", [])
        if isinstance(item, dict) and isinstance(item.get("rule"), dict)
    ]


def _iifname(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        match = expr.get("match") if isinstance(expr, dict) else None
        if isinstance(match, dict) and match.get("left") == {"meta": {"key": "iifname"}}:
            right = match.get("right")
            return right if isinstance(right, str) else None
    return None
