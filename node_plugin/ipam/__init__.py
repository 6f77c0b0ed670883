"""IPAM: host-local's ranges and round-robin allocator, its on-disk lease store (the
reference layout, shared with the reference plugin and read by the node agent), its
config, and the delegation of any other IPAM type to its binary by exec.

May import `node_plugin.cni` and, of the kernel toolkit, only `kernel.durable` (IPAM
touches files, never links).
"""
