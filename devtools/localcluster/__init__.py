"""A real Kubernetes on one machine without Docker, at three tiers.

`control-plane` (etcd, apiserver, controller manager, scheduler), `fake-nodes`
(+ kwok nodes) and `real-node` (+ containerd/runc/kubelet nodes, each in its own
network namespace). Used by `make cluster-up/down` and the pytest `cluster`
fixture (see `pytest_plugin.py`).
"""

from .cluster import ClusterError, LocalCluster, RealNode, attach, down_by_name, up
from .tiers import Tier

__all__ = ["ClusterError", "LocalCluster", "RealNode", "Tier", "attach", "down_by_name", "up"]
