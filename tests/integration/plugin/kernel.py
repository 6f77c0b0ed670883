"""Test helpers that read and prepare kernel state with iproute2, nft and iptables.

Every object has a random name and lives in a network namespace the test owns.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/run/netns")


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
