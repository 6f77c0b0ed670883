"""Test helpers that read and prepare kernel state with iproute2, nft and iptables.

Every object has a random name and lives in a network namespace the test owns.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")
# node_plugin.kernel.tombstones.GROUP: the link group of veth pairs a server's DEL buried.
TOMBSTONE_GROUP = "0x63777462"


def unique(prefix: str) -> str:
    """A short random name (interface names are at most 15 bytes)."""
    return f"{prefix}{secrets.token_hex(4)}"


def run(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, input=input, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}"
        )
    return proc.stdout.decode()


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return str(NETNS_DIR / self.name)

    def exists(self) -> bool:
        return (NETNS_DIR / self.name).exists()

    def ip(self, *args: str) -> Any:
        """`ip -n NS -j ARGS` parsed (iproute2's JSON output)."""
        out = run("ip", "-n", self.name, "-j", *args)
        return json.loads(out) if out.strip() else []

    def exec(self, *argv: str, check: bool = True) -> str:
        return run("ip", "netns", "exec", self.name, *argv, check=check)

    def link(self, name: str) -> dict[str, Any] | None:
        links = [x for x in self.ip("-d", "link", "show") if x.get("ifname") == name]
        return links[0] if links else None

    def must_link(self, name: str) -> dict[str, Any]:
        link = self.link(name)
        assert link is not None, f"{name} not found in {self.name}"
        return link

    def links(self) -> list[dict[str, Any]]:
        return list(self.ip("-d", "link", "show"))

    def addrs(self, ifname: str) -> list[str]:
        out = self.ip("addr", "show", "dev", ifname)
        return sorted(
            f"{a['local']}/{a['prefixlen']}"
            for entry in out
            for a in entry.get("addr_info", [])
            if a.get("scope") != "link"
        )

    def routes(self, family: str = "-4") -> list[dict[str, Any]]:
        return list(self.ip(family, "route", "show"))

    def sysctl(self, key: str) -> str:
        return self.exec("cat", f"/proc/sys/{key.replace('.', '/')}").strip()


def create_netns(prefix: str) -> Netns:
    ns = Netns(unique(prefix))
    run("ip", "netns", "add", ns.name)
    return ns


def delete_netns(ns: Netns) -> None:
    if ns.exists():
        run("ip", "netns", "del", ns.name, check=False)


@contextlib.contextmanager
def netns_factory(prefix: str) -> Iterator[Callable[[], Netns]]:
    """make() creates one more namespace named `<prefix>...`; all are deleted at the end,
    also when a creation or the test fails."""
    made: list[Netns] = []

    def make() -> Netns:
        ns = create_netns(prefix)
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            delete_netns(ns)


def veths(ns: Netns) -> list[str]:
    """Names of the veth links in `ns`."""
    return [x["ifname"] for x in ns.links() if x.get("linkinfo", {}).get("info_kind") == "veth"]


def iptables_nat(host: Netns, family: int = 4) -> list[str]:
    tool = "iptables" if family == 4 else "ip6tables"
    return [ln for ln in host.exec(tool, "-w", "-t", "nat", "-S").splitlines() if "CNI-" in ln]


def nft_ruleset(host: Netns) -> str:
    return host.exec("nft", "list", "ruleset")


def host_veth_of(host: Netns, sb: Netns, ifname: str) -> dict[str, Any] | None:
    """The host-side peer of a sandbox veth (found by ifindex, names are random)."""
    cont = sb.link(ifname)
    if cont is None:
        return None
    peer_index = cont.get("link_index")
    for link in host.links():
        if (
            link.get("ifindex") == peer_index
            and link.get("linkinfo", {}).get("info_kind") == "veth"
        ):
            return link
    return None


def _routes(ns: Netns, family: str) -> list[tuple[str, ...]]:
    out = []
    for r in ns.routes(family):
        if str(r.get("dst", "")).startswith("fe80"):
            continue
        out.append(
            (
                str(r.get("dst")),
                str(r.get("gateway", "")),
                str(r.get("dev", "")),
                str(r.get("protocol", "boot")),
                str(r.get("scope", "")),
                str(r.get("metric", "")),
            )
        )
    return sorted(out)


def attachment_state(host: Netns, sb: Netns, ifname: str, bridge: str) -> dict[str, Any]:
    """Kernel state of one attachment, normalized (random names and MACs left out)."""
    cont = sb.link(ifname)
    hv = host_veth_of(host, sb, ifname)
    br = host.link(bridge)
    slave = (hv or {}).get("linkinfo", {}).get("info_slave_data", {})
    has_v6 = any(":" in a for a in (sb.addrs(ifname) if cont else []))
    return {
        "container": None
        if cont is None
        else {
            "kind": cont.get("linkinfo", {}).get("info_kind"),
            "mtu": cont.get("mtu"),
            "up": "UP" in cont.get("flags", []),
            "addresses": sb.addrs(ifname),
            "accept_dad": sb.sysctl(f"net/ipv6/conf/{ifname}/accept_dad") if has_v6 else None,
        },
        "routes4": _routes(sb, "-4"),
        "routes6": _routes(sb, "-6"),
        "host_veth": None
        if hv is None
        else {
            "master": hv.get("master"),
            "mtu": hv.get("mtu"),
            "up": "UP" in hv.get("flags", []),
            "operstate": hv.get("operstate"),
            "hairpin": slave.get("hairpin"),
            "isolated": slave.get("isolated"),
        },
        "bridge": None
        if br is None
        else {
            "kind": br.get("linkinfo", {}).get("info_kind"),
            "mtu": br.get("mtu"),
            "up": "UP" in br.get("flags", []),
            "promisc": "PROMISC" in br.get("flags", []),
            "addresses": host.addrs(bridge),
        },
    }


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll: the kernel destroys a deleted namespace's devices asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def tombstones(ns: Netns) -> list[dict[str, Any]]:
    """Links a DEL through the resident server buried and its reaper has not deleted yet."""
    shown = ns.ip("-d", "link", "show", "group", TOMBSTONE_GROUP)
    return [link for link in shown if "ifname" in link]  # iproute2 prints [{}] for none


def wait_reaped(ns: Netns, timeout: float = 15.0) -> None:
    """Until the server's reaper has unregistered every tombstone in `ns` (after a DEL
    through shim+server the kernel state is final only then; none ever exist standalone)."""
    wait_until(lambda: not tombstones(ns), f"the tombstones in {ns.name} to be reaped", timeout)
