"""The node's kernel toolkit: one module per kind of kernel object.

- `rtnl`       a small synchronous rtnetlink client (the wire format);
- `netlink`    link, address and route operations, with errors a person can act on;
- `netns`      entering network namespaces per thread, and always coming back;
- `sysctl`     /proc/sys reads and writes in the calling thread's namespace;
- `netfilter`  running iptables/nft;
- `tombstones` veth pairs a DEL took out of service, for a reaper to unregister.

Imports nothing above it: only the standard library, pyroute2 and `node_plugin.cni.errors`
(the error type every caller turns into a CNI answer).
"""
