"""The node's kernel toolkit: one module per kind of kernel object, for the plugins, the
resident server and the operator's agent (host-gw routes and masquerade) alike.

- `rtnl`       a small synchronous rtnetlink client (the wire format);
- `netlink`    link, address and route operations, with errors a person can act on;
- `netns`      entering network namespaces per thread, and always coming back;
- `sysctl`     /proc/sys reads and writes in the calling thread's namespace;
- `netfilter`  running iptables/nft;
- `tombstones` veth pairs a DEL took out of service, for a reaper to unregister;
- `durable`    files that survive a crash whole (short writes looped, fsync of the dir).

Every failure is a `node_plugin.cni.errors.CniError` whose message says what was being
done. Why a hand-written client rather than pyroute2: docs/kernel-toolkit.md (measured);
pyroute2 is used only for bridge VLAN filters, imported inside `netlink.vlan`.

Imports nothing above it: only the standard library, pyroute2 and `node_plugin.cni.errors`
(the error type every caller turns into a CNI answer or a report line).
"""
