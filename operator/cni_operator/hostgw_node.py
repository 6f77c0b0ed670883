"""Host-gw on the node: applies `hostgw.plan` to the kernel of the agent's network namespace.

Routes go through netlink (pyroute2) tagged with `hostgw.ROUTE_PROTOCOL`, so a
restarted agent finds exactly its own routes again and never touches others.
The masquerade rule is one nftables table, replaced in one `nft -f` transaction
(the nft CLI, as the plugins use it: pyroute2's nftables support is not stable).

The agent feeds Node events to `on_node` and calls `sync` after each reconcile
pass with the specs of the networks that pass left applied (the manifest's), so
routes exist exactly while a routed network's file is on this node.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from cni_operator import hostgw

log = logging.getLogger("cniwarden.hostgw")
_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class HostGatewayError(RuntimeError):
    pass


class KernelRoutes:
    """Our routes in the main table of the current network namespace."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # noqa: PLC0415  (agents without routing never load it)

        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def ours(self) -> set[tuple[str, str]]:
        found = set()
        for family in _FAMILIES:
            for route in self._ipr.route("dump", family=family, proto=hostgw.ROUTE_PROTOCOL):
                if route.get("table") != 254 or route.get("proto") != hostgw.ROUTE_PROTOCOL:
                    continue
                dst, gateway = route.get("dst"), route.get("gateway")
                if dst and gateway:
                    found.add((f"{dst}/{route['dst_len']}", str(gateway)))
        return found

    def local_addresses(self) -> tuple[list[str], list[str]]:
        """(connected prefixes, own addresses), link-local excluded."""
        prefixes, addresses = [], []
        for msg in self._ipr.addr("dump"):
            address, length = msg.get("address"), msg.get("prefixlen")
            if not address or length is None:
                continue
            iface = ipaddress.ip_interface(f"{address}/{length}")
            if iface.ip.is_link_local or iface.ip.is_loopback:
                continue
            prefixes.append(str(iface.network))
            addresses.append(str(iface.ip))
        return prefixes, addresses

    def replace(self, route: hostgw.Route) -> None:
        self._ipr.route(
            "replace",
            dst=route.destination,
            gateway=route.gateway,
            proto=hostgw.ROUTE_PROTOCOL,
        )

    def delete(self, destination: str, gateway: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        try:
            self._ipr.route("del", dst=destination, gateway=gateway, proto=hostgw.ROUTE_PROTOCOL)
        except NetlinkError as error:
            if error.code != 3:  # ESRCH: already gone
                raise


def apply_nft(script: str, nft: str | None = None) -> None:
    binary = nft or shutil.which("nft") or "/usr/sbin/nft"
    out = subprocess.run(
        [binary, "-f", "-"], input=script, capture_output=True, text=True, check=False, timeout=30
    )
    if out.returncode != 0:
        raise HostGatewayError(f"nft failed ({out.returncode}): {out.stderr.strip()}")


def nft_available() -> bool:
    return shutil.which("nft") is not None or os.path.exists("/usr/sbin/nft")


class HostGatewayNode:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._nodes: dict[str, hostgw.PeerNode] = {}
        self._lock = threading.Lock()
        self._routes: KernelRoutes | None = None
        self._applied_script: str | None = None
        self._first = True

    # ------------------------------------------------------------ inputs
    def on_node(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Record a Node event; True when it changes what host-gw uses (a pass is due)."""
        name = str((body.get("metadata") or {}).get("name") or "")
        if not name:
            return False
        with self._lock:
            old = self._nodes.get(name)
            if event_type == "DELETED":
                self._nodes.pop(name, None)
                return old is not None
            peer = hostgw.PeerNode.from_node(body)
            self._nodes[name] = peer
            return peer != old

    def nodes(self) -> list[hostgw.PeerNode]:
        with self._lock:
            return list(self._nodes.values())

    # ------------------------------------------------------------- apply
    def _kernel(self) -> KernelRoutes:
        if self._routes is None:
            self._routes = KernelRoutes()
        return self._routes

    def desired(self, applied_specs: Mapping[str, Mapping[str, Any]]) -> hostgw.Plan:
        wishes = hostgw.wishes_from_specs(applied_specs)
        if not wishes:
            return hostgw.Plan()
        prefixes, addresses = self._kernel().local_addresses()
        return hostgw.plan(self.node_name, self.nodes(), wishes, prefixes, addresses)

    def sync(self, applied_specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Make the kernel match the plan for the networks applied on this node (their
        specs by name); returns the node report section (None when host-gw has never
        been used here and nothing is to be done)."""
        try:
            plan = self.desired(applied_specs)
        except Exception as error:  # a broken spec or netlink: report, do not crash
            log.warning("host-gw: cannot compute routes: %s", error)
            return hostgw.report(hostgw.Plan(), applied=False, error=str(error))
        if plan.empty and self._routes is None and not self._first:
            return None
        errors: list[str] = []
        try:
            kernel = self._kernel()
            changes = hostgw.route_changes(kernel.ours(), plan.routes)
            for route in changes.add:
                try:
                    kernel.replace(route)
                    log.info(
                        "host-gw: route %s via %s (%s)",
                        route.destination,
                        route.gateway,
                        route.node,
                    )
                except Exception as error:
                    errors.append(f"route {route.destination} via {route.gateway}: {error}")
            for destination, gateway in changes.remove:
                try:
                    kernel.delete(destination, gateway)
                    log.info("host-gw: removed route %s via %s", destination, gateway)
                except Exception as error:
                    errors.append(f"remove route {destination} via {gateway}: {error}")
        except Exception as error:
            errors.append(f"netlink: {error}")
        script = hostgw.nft_script(plan.masquerade)
        if script != self._applied_script:
            wanted = plan.masquerade is not None
            if wanted or nft_available():
                try:
                    apply_nft(script)
                    self._applied_script = script
                except (OSError, subprocess.SubprocessError, HostGatewayError) as error:
                    errors.append(f"masquerade: {error}")
            else:
                self._applied_script = script
        self._first = False
        for message in errors:
            log.warning("host-gw: %s", message)
        if plan.empty and not errors:
            self.close()
            return None
        return hostgw.report(plan, applied=not errors, error="; ".join(errors) or None)

    def close(self) -> None:
        if self._routes is not None:
            self._routes.close()
            self._routes = None
