"""One pass of the node agent, as its steps: make this node's files match the CNINetworks.

Blocking file I/O and subprocesses (VERSION probes), no kopf and no API calls:
the agent runs a pass in a thread with a snapshot of the CNINetwork objects and
its Node, and publishes the returned report. `Reconciler.reconcile` (in
`orchestrator`) runs the steps in this order, because each one relies on the
one before:

1. `intake`: the snapshot as typed objects (which networks select this node,
   which specs are invalid and keep their last good file);
2. `removal`: networks gone (deleted, or no longer selecting this node) lose
   our file and get back what their quarantine moved aside; a node that merely
   stopped being selected while pods are attached is gated like any switch;
3. `apply`, per selected network by file order: render, `install` binaries
   (ours and declared) before the config, validate against the bin dir, ask the
   `gate` (unsafe changes and takeovers with live attachments), then write
   atomically; an invalid or held network keeps its last good file;
4. `shadow`: quarantine foreign files that win over ours when the winning
   network of ours asks for it, restore when nothing asks any more;
5. `cleanup`: remove binaries we own that no file of ours names;
6. `report`: scan the node and build the CNINodeState status and Events.

`model` holds the types the steps pass each other. Only `gate` is pure; the
others touch the node's files through `cni_operator.node`.
"""

from cni_operator.reconcile.model import AgentEvent, PassResult
from cni_operator.reconcile.orchestrator import Reconciler

__all__ = ["AgentEvent", "PassResult", "Reconciler"]
