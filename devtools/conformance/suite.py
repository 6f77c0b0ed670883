"""What runs: the focus, and every skip with the reason it is skipped (one place).

Pure data and string building: no I/O. `make conformance` runs FULL; CI's e2e
test runs CI (a subset that fits its time budget, see README "Conformance").
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Skip:
    pattern: str
    reason: str


@dataclass(frozen=True)
class Selection:
    name: str
    focus: tuple[str, ...]

    @property
    def focus_regex(self) -> str:
        return "|".join(self.focus)


# Only what this environment cannot offer, or what is not cniwarden's yet.
SKIPS = (
    Skip(
        r"LoadBalancer",
        "no cloud provider or load-balancer controller: a type=LoadBalancer Service never "
        "gets an address on a local cluster (kind skips it too)",
    ),
    Skip(
        r"ExternalIP",
        "external IPs must route to a node from outside the cluster; the local cluster's nodes "
        "sit on a private bridge and tests send no traffic off the machine",
    ),
    Skip(
        r"SCTP",
        "SCTP needs the sctp kernel module, which is machine-wide and not loaded on this "
        "shared VM; the example network carries TCP and UDP",
    ),
    Skip(
        r"IPv6|DualStack|\[Feature:IPv6DualStack\]",
        "the local cluster is IPv4-only (pod CIDR 10.244.0.0/16, Service CIDR 10.96.0.0/16)",
    ),
    Skip(
        r"\[Serial\]|\[Disruptive\]",
        "they need the whole cluster to themselves or restart/break nodes; the run is "
        "parallel on a machine shared with other clusters",
    ),
    Skip(
        r"NetworkPolicy|Netpol",
        "NetworkPolicy is out of scope for cniwarden today (the next capability after this one)",
    ),
)

FULL = Selection(
    "full",
    (r"\[sig-network\].*\[Conformance\]", r"\[sig-network\] Networking Granular Checks"),
)
# CI: the pod-to-pod and Service data paths (Granular Checks), the Services
# conformance specs and hostPort (portmap, chained by the example network); the
# rest (DNS, EndpointSlice, Proxy, API-only specs) with `make conformance`.
CI = Selection(
    "ci",
    (
        r"\[sig-network\] Networking Granular Checks",
        r"\[sig-network\] Services .*\[Conformance\]",
        r"\[sig-network\] HostPort .*\[Conformance\]",
    ),
)
SELECTIONS = {s.name: s for s in (FULL, CI)}


def focused(focus: str) -> Selection:
    """Only the specs matching `focus` (a focused re-run of a few specs; the skip
    list still applies). Go's regexp, which ginkgo uses, has no lookahead, so this
    replaces a selection's focus rather than narrowing it."""
    re.compile(focus)
    return Selection("focused", (focus,))


def skip_regex(skips: tuple[Skip, ...] = SKIPS) -> str:
    return "|".join(f"(?:{s.pattern})" for s in skips)


def skipped_by(spec_name: str, skips: tuple[Skip, ...] = SKIPS) -> Skip | None:
    """The first skip entry matching a spec's full text, as ginkgo matches it."""
    for skip in skips:
        if re.search(skip.pattern, spec_name):
            return skip
    return None
