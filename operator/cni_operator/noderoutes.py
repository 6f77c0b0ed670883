"""The slim projection of the Nodes that host-gw needs: one `CNINodeRoutes` object.

Every agent needs, from every other Node, only its name, pod CIDRs and InternalIPs
(and its uid, to post an Event about a pod CIDR it refuses: `hostgw_node`). Those
change when a node joins, leaves, or is renumbered, not with the heartbeats that
make up nearly all Node updates (kubelet's or kwok's status every few seconds). So
the controller, which watches every Node anyway, publishes them in one
cluster-scoped object, `cninoderoutes.cniwarden.io/cluster`, and rewrites it only
when that list changes; each agent watches that one object and, for its own Node,
a watch field-selected on its name. One Node heartbeat then reaches no agent.

A CRD rather than a ConfigMap: it is cluster-scoped like the Nodes it projects
(a ConfigMap needs a namespace, which the chart's release namespace would tie to
the install), its schema is checked by the API server, and its RBAC is its own,
with no grant on core ConfigMaps that would reach every other ConfigMap there.

Shape (`spec.nodes`, sorted by name):

    apiVersion: cniwarden.io/v1alpha1
    kind: CNINodeRoutes
    metadata: {name: cluster}
    spec:
      nodes:
        - {name: node-a, uid: 6f1c..., podCIDRs: [10.244.1.0/24], internalIPs: [10.0.0.11]}

Size (measured in tests/unit/operator/test_noderoutes.py): an entry, uid included, is
~140 bytes of JSON with a 20-character name, one pod CIDR and one IPv4 InternalIP,
~190 bytes dual-stack with a 40-character name. The API server stores at most ~1.5 MiB
per object (etcd's request limit); `MAX_BYTES` (1.2 MB) keeps a margin below it.
5,000 nodes, Kubernetes' own limit per cluster, fit: ~670 KiB single-stack, ~940 KiB
dual-stack; with 253-character names (the maximum) and dual-stack, ~3,000 nodes fit.
Past `MAX_BYTES` the controller does not write (it logs why) and the agents keep the
last published list; nothing is truncated, which would read as nodes having left.

"No object" means "not known yet", never "no nodes": an agent that starts before the
controller has published (an upgrade from a version without the projection) keeps
the routes it finds. The controller publishes only after a full list of the Nodes,
never from the first Node events of a watch (which stream one object at a time).

Pure: plain values in and out; no kopf, no API client, no netlink.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_operator.hostgw import PeerNode

GROUP = "cniwarden.io"
VERSION = "v1alpha1"
KIND = "CNINodeRoutes"
PLURAL = "cninoderoutes"
NAME = "cluster"  # the singleton
MAX_BYTES = 1_200_000  # the API server's limit is ~1.5 MiB per object


def entry(peer: PeerNode) -> dict[str, Any]:
    """One node's line in `spec.nodes`."""
    return {
        "name": peer.name,
        "uid": peer.uid,
        "podCIDRs": list(peer.pod_cidrs),
        "internalIPs": list(peer.internal_ips),
    }


def spec_of(peers: Iterable[PeerNode]) -> dict[str, Any]:
    """The object's spec for these nodes (sorted by name: one list, one text)."""
    return {"nodes": [entry(p) for p in sorted(peers, key=lambda p: p.name)]}


def body_of(peers: Iterable[PeerNode]) -> dict[str, Any]:
    """The whole object, for a create."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/managed-by": "cniwarden"}},
        "spec": spec_of(peers),
    }


def encoded_size(spec: Mapping[str, Any]) -> int:
    """Bytes of the spec as JSON (what the API server stores, give or take metadata)."""
    return len(json.dumps(spec, separators=(",", ":")).encode())


def peers_of(body: Mapping[str, Any] | None) -> tuple[PeerNode, ...] | None:
    """The nodes a published object lists; None when there is no object or it lists
    no `spec.nodes` at all (unknown: keep what is there), () when it lists none."""
    if body is None:
        return None
    nodes = (body.get("spec") or {}).get("nodes")
    if not isinstance(nodes, list):
        return None
    peers = []
    for item in nodes:
        if not isinstance(item, Mapping) or not item.get("name"):
            continue
        peers.append(
            PeerNode(
                name=str(item["name"]),
                internal_ips=tuple(str(a) for a in item.get("internalIPs") or []),
                pod_cidrs=tuple(str(c) for c in item.get("podCIDRs") or []),
                uid=str(item.get("uid") or ""),
            )
        )
    return tuple(sorted(peers, key=lambda p: p.name))


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


@dataclass
class Projection:
    """The controller's view of every Node as host-gw needs it, fed by the Node watch
    and by full lists. `listed` is False until the first full list has been merged:
    until then the view may miss Nodes and must not be published."""

    nodes: dict[str, PeerNode] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # resourceVersion seen per Node
    listed: bool = False

    def on_node(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """Record a Node event; True when the projection changed (a heartbeat: False)."""
        name = str((body.get("metadata") or {}).get("name") or "")
        if not name:
            return False
        if event_type == "DELETED":
            self.versions.pop(name, None)
            return self.nodes.pop(name, None) is not None
        peer = PeerNode.from_node(body)
        self.versions[name] = _rv(body)
        old, self.nodes[name] = self.nodes.get(name), peer
        return old != peer

    def merge_listing(self, items: Iterable[Mapping[str, Any]], listed_rv: int) -> bool:
        """Merge a full list of Nodes taken at `listed_rv`: the list is the truth at that
        version, except for copies the watch delivered that are newer, and Nodes created
        after it. A Node deleted meanwhile whose DELETED event came before the list
        answered comes back until the next list or its next event (rare, and the next
        list is never more than a resync away). True when the projection changed."""
        before = self.snapshot()
        listed = {
            str(i["metadata"]["name"]): i for i in items if (i.get("metadata") or {}).get("name")
        }
        nodes: dict[str, PeerNode] = {}
        versions: dict[str, int] = {}
        for name, item in listed.items():
            if name in self.nodes and self.versions.get(name, 0) > _rv(item):
                nodes[name], versions[name] = self.nodes[name], self.versions[name]
            else:
                nodes[name], versions[name] = PeerNode.from_node(item), _rv(item)
        for name, peer in self.nodes.items():
            if name not in listed and self.versions.get(name, 0) > listed_rv:
                nodes[name], versions[name] = peer, self.versions[name]
        self.nodes, self.versions, self.listed = nodes, versions, True
        return self.snapshot() != before

    def snapshot(self) -> tuple[PeerNode, ...]:
        return tuple(sorted(self.nodes.values(), key=lambda p: p.name))


def needs_write(published: Mapping[str, Any] | None, peers: Iterable[PeerNode]) -> bool:
    """Whether the stored object (None: there is none) differs from these nodes."""
    if published is None:
        return True
    return peers_of(published) != tuple(sorted(peers, key=lambda p: p.name))
