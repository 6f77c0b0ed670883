"""Host-gw on the node: applies `hostgw.plan` to the kernel of the agent's network namespace.

Through the node's one kernel toolkit, as the plugins use it: routes through
`node_plugin.kernel.netlink`, tagged with `hostgw.ROUTE_PROTOCOL` so a restarted agent
finds exactly its own routes again and never touches others; the masquerade rule as one
nftables table, replaced in one `nft -f` transaction through `node_plugin.kernel.netfilter`.
Failures are the toolkit's CniError, reported by their message in the node report.

The agent feeds it the peers the controller publishes (`set_peers`, from the
`CNINodeRoutes` projection, see `noderoutes`) and its own Node (`set_own`, from a
watch of that one Node), and calls `sync` after each reconcile pass with the specs
of the networks that pass left applied (the manifest's), so routes exist exactly
while a routed network's file is on this node. Until the first projection arrives
the peers are unknown, not absent: a routed network's routes and masquerade rule
are then left as the kernel has them (an agent restarted during an upgrade, before
the controller publishes, must not cut pod traffic to every other node). A peer pod CIDR
`hostgw.plan` refuses is in the report each pass, and once (until it is routable again)
in `take_events()`, for an Event about the Node that claimed it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cni_operator import hostgw
from node_plugin.cni.errors import CniError
from node_plugin.kernel import netfilter, netlink

log = logging.getLogger("cniwarden.hostgw")
ROUTE_REFUSED = "HostGatewayRouteRefused"
WAITING_FOR_PEERS = (
    "waiting for the controller's CNINodeRoutes (the other nodes' pod CIDRs): "
    "routes and masquerade left as they are"
)


@dataclass(frozen=True)
class NodeEvent:
    """An Event to post about a Node (`involved` is its object reference)."""

    involved: dict[str, Any]
    reason: str
    message: str


def our_routes(ipr: netlink.IPRoute) -> set[tuple[str, str]]:
    """(destination, gateway) of the routes host-gw installed in the main table."""
    return {
        (str(destination), str(gateway))
        for destination, gateway in netlink.routes_of_protocol(ipr, hostgw.ROUTE_PROTOCOL)
        if gateway is not None
    }


def local_addresses(ipr: netlink.IPRoute) -> tuple[list[str], list[str]]:
    """(connected prefixes, own addresses), link-local and loopback excluded."""
    found = netlink.interface_addresses(ipr)
    return [str(i.network) for i in found], [str(i.ip) for i in found]


def replace_route(ipr: netlink.IPRoute, route: hostgw.Route) -> None:
    netlink.replace_route(
        ipr,
        ipaddress.ip_network(route.destination),
        ipaddress.ip_address(route.gateway),
        protocol=hostgw.ROUTE_PROTOCOL,
    )


def delete_route(ipr: netlink.IPRoute, destination: str, gateway: str) -> None:
    netlink.delete_route(
        ipr,
        ipaddress.ip_network(destination),
        ipaddress.ip_address(gateway),
        protocol=hostgw.ROUTE_PROTOCOL,
    )


class HostGatewayNode:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._peers: dict[str, hostgw.PeerNode] | None = None  # None: not published yet
        self._own: hostgw.PeerNode | None = None
        self._lock = threading.Lock()
        self._applied_script: str | None = None
        # True once a pass left nothing of ours in the kernel; until then (from start: a
        # previous agent may have left routes) every pass looks.
        self._clean = False
        self._refused: set[hostgw.Refusal] = set()  # as of the last pass
        self._events: list[NodeEvent] = []

    # ------------------------------------------------------------ inputs
    def set_peers(self, peers: Iterable[hostgw.PeerNode] | None) -> bool:
        """Every Node as the projection lists it (None: not known yet); True when that
        changes what host-gw uses (a pass is due)."""
        known = None if peers is None else {p.name: p for p in peers}
        with self._lock:
            changed = known != self._peers
            self._peers = known
            return changed

    def set_own(self, body: Mapping[str, Any] | None) -> bool:
        """This node's own Node (None: deleted or not seen yet); True when that changes
        what host-gw uses. Fresher than its line in the projection, so it wins."""
        own = None if body is None else hostgw.PeerNode.from_node(body)
        with self._lock:
            changed = own != self._own
            self._own = own
            return changed

    @property
    def peers_known(self) -> bool:
        with self._lock:
            return self._peers is not None

    def nodes(self) -> list[hostgw.PeerNode]:
        with self._lock:
            nodes = dict(self._peers or {})
            if self._own is not None and self._own.name == self.node_name:
                nodes[self.node_name] = self._own
            return list(nodes.values())

    # ------------------------------------------------------------ outputs
    def take_events(self) -> list[NodeEvent]:
        """The Events due since the last call: one per newly refused peer pod CIDR."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def _note_refusals(self, refused: tuple[hostgw.Refusal, ...]) -> None:
        uids = {n.name: n.uid for n in self.nodes()}
        fresh = [r for r in refused if r not in self._refused]
        self._refused = set(refused)
        events = [
            NodeEvent(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": r.node, "uid": uids.get(r.node) or None},
                },
                ROUTE_REFUSED,
                f"host-gw on node {self.node_name} does not route {r.cidr} to node {r.node}: "
                f"{r.reason}",
            )
            for r in fresh
        ]
        with self._lock:
            self._events += events

    # ------------------------------------------------------------- apply
    def sync(self, applied_specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Make the kernel match the plan for the networks applied on this node (their
        specs by name); returns the node report section (None when host-gw has never
        been used here and nothing is to be done)."""
        try:
            wishes = hostgw.wishes_from_specs(applied_specs)
        except ValueError as error:  # a spec the agent could not parse: report, never crash
            log.warning("host-gw: cannot compute routes: %s", error)
            return hostgw.report(hostgw.Plan(), applied=False, error=str(error))
        if self._clean and not wishes and not self._refused:
            return None
        if wishes and not self.peers_known:
            # Unknown peers are not "no peers": touch nothing until the projection comes.
            plan = hostgw.Plan(
                skipped=(WAITING_FOR_PEERS,),
                networks=tuple(w.network for w in wishes),
                host_gateway=any(w.host_gateway for w in wishes),
            )
            return hostgw.report(plan, applied=False)
        try:
            with netlink.opened() as ipr:
                return self._sync(wishes, ipr)
        except CniError as error:
            log.warning("host-gw: %s", error.msg)
            return hostgw.report(hostgw.Plan(), applied=False, error=error.msg)

    def _sync(
        self, wishes: list[hostgw.RoutingWish], ipr: netlink.IPRoute
    ) -> dict[str, Any] | None:
        plan = hostgw.Plan()
        if wishes:
            prefixes, addresses = local_addresses(ipr)
            plan = hostgw.plan(self.node_name, self.nodes(), wishes, prefixes, addresses)
        self._note_refusals(plan.refused)
        errors: list[str] = []
        try:
            changes = hostgw.route_changes(our_routes(ipr), plan.routes)
        except CniError as error:
            errors.append(error.msg)
            changes = hostgw.RouteChanges((), ())
        for route in changes.add:
            try:
                replace_route(ipr, route)
                log.info(
                    "host-gw: route %s via %s (%s)", route.destination, route.gateway, route.node
                )
            except CniError as error:
                errors.append(error.msg)
        for destination, gateway in changes.remove:
            try:
                delete_route(ipr, destination, gateway)
                log.info("host-gw: removed route %s via %s", destination, gateway)
            except CniError as error:
                errors.append(error.msg)
        self._apply_masquerade(plan, errors)
        for message in errors:
            log.warning("host-gw: %s", message)
        self._clean = plan.empty and not errors
        if self._clean and plan.silent:
            return None
        return hostgw.report(plan, applied=not errors, error="; ".join(errors) or None)

    def _apply_masquerade(self, plan: hostgw.Plan, errors: list[str]) -> None:
        script = hostgw.nft_script(plan.masquerade)
        if script == self._applied_script:
            return
        if plan.masquerade is None and not netfilter.available("nft"):
            self._applied_script = script  # no nft: no table of ours can exist
            return
        try:
            netfilter.nft_apply(script, "host-gw masquerade: nft")
            self._applied_script = script
        except CniError as error:
            errors.append(error.msg)
