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

Our route to a destination overwrites another owner's (a static route, the old CNI's):
that route is recorded first in a journal on the node (`displaced_journal`,
`hostgw.DisplacedRoute`) and put back, in one `ip route replace`, when ours goes, so
a network leaving a node (a migration rolled back, a CNINetwork deleted) gives the
node back the routing it had.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni_operator import hostgw
from cni_operator.node.atomic import atomic_write
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


def restore_route(ipr: netlink.IPRoute, route: hostgw.DisplacedRoute) -> None:
    """Put a displaced route back over ours (no gap); without its link when that is gone."""
    destination = ipaddress.ip_network(route.destination)
    gateway = ipaddress.ip_address(route.gateway) if route.gateway else None
    try:
        netlink.replace_route(ipr, destination, gateway, protocol=route.protocol, oif=route.oif)
    except CniError:
        if not route.oif or gateway is None:
            raise
        netlink.replace_route(ipr, destination, gateway, protocol=route.protocol)


class HostGatewayNode:
    def __init__(self, node_name: str, displaced_journal: Path | None = None) -> None:
        self.node_name = node_name
        # Where the routes ours displaced are kept (None: not kept, never restored).
        self.displaced_journal = displaced_journal
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
        displaced = self._read_displaced(errors) if changes.add or changes.remove else None
        for route in changes.add:
            try:
                if displaced is not None:
                    self._record_displaced(ipr, route.destination, displaced)
                replace_route(ipr, route)
                log.info(
                    "host-gw: route %s via %s (%s)", route.destination, route.gateway, route.node
                )
            except CniError as error:
                errors.append(error.msg)
            except OSError as error:
                errors.append(f"journal of displaced routes: {error}; {route.destination} left")
        for destination, gateway in changes.remove:
            try:
                put_back = (displaced or {}).get(destination)
                if put_back is None:
                    delete_route(ipr, destination, gateway)
                    log.info("host-gw: removed route %s via %s", destination, gateway)
                    continue
                restore_route(ipr, put_back)
                assert displaced is not None
                del displaced[destination]
                self._write_displaced(displaced)
                log.info(
                    "host-gw: route %s via %s put back (proto %d) over ours",
                    destination,
                    put_back.gateway,
                    put_back.protocol,
                )
            except CniError as error:
                errors.append(error.msg)
            except OSError as error:
                errors.append(f"journal of displaced routes: {error}")
        self._apply_masquerade(plan, errors)
        for message in errors:
            log.warning("host-gw: %s", message)
        self._clean = plan.empty and not errors
        if self._clean and plan.silent:
            return None
        return hostgw.report(plan, applied=not errors, error="; ".join(errors) or None)

    def _read_displaced(self, errors: list[str]) -> dict[str, hostgw.DisplacedRoute] | None:
        """The journal's routes (empty when there is none yet); None when it is not
        kept or cannot be read (said in `errors`: nothing is recorded or put back)."""
        if self.displaced_journal is None:
            return None
        try:
            return hostgw.parse_displaced(self.displaced_journal.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, hostgw.DisplacedJournalError) as error:
            errors.append(
                f"journal of displaced routes {self.displaced_journal}: {error}; "
                "routes ours overwrite are not recorded, none is put back"
            )
            return None

    def _write_displaced(self, routes: Mapping[str, hostgw.DisplacedRoute]) -> None:
        """Write the journal, or remove it once empty (an idle agent's state dir holds
        nothing of it, so an uninstall still removes that dir: `teardown.tidy_node`)."""
        assert self.displaced_journal is not None
        if not routes:
            self.displaced_journal.unlink(missing_ok=True)
            return
        self.displaced_journal.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.displaced_journal, hostgw.displaced_json(routes), mode=0o600)

    def _record_displaced(
        self, ipr: netlink.IPRoute, destination: str, displaced: dict[str, hostgw.DisplacedRoute]
    ) -> None:
        """Journal another owner's route to `destination` before ours overwrites it
        (written first: a crash in between leaves an entry that puts back that same route)."""
        if destination in displaced:
            return
        found = netlink.main_route_to(ipr, ipaddress.ip_network(destination))
        if found is None or found.protocol == hostgw.ROUTE_PROTOCOL:
            return
        displaced[destination] = hostgw.DisplacedRoute(
            destination,
            None if found.gateway is None else str(found.gateway),
            found.oif,
            found.protocol,
        )
        self._write_displaced(displaced)
        log.info(
            "host-gw: route %s via %s (proto %d) recorded before ours overwrites it",
            destination,
            found.gateway,
            found.protocol,
        )

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
