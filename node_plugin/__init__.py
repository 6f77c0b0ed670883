"""cniwarden's CNI plugins (bridge and host-local IPAM, CNI 1.1.0) and their resident server.

Layers, each importing only the ones below it (enforced by import-linter, `make lint`):

- `server/`  the resident cni-server behind the static shim (threads, socket, DEL queue);
- `bridge/`  the bridge plugin: config, ADD/DEL/CHECK/GC/STATUS, spoof check, announce, masq;
- `ipam/`    host-local IPAM (ranges, the on-disk lease store) and delegation to other IPAMs;
- `kernel/`  the node's kernel toolkit: netlink, namespaces, sysctl, netfilter, tombstones;
- `cni/`     the CNI protocol: skel, versions, results, errors, CNI_ARGS, Go-style decoding.

`api` is the one in-process entry point; `cli` holds the console scripts. Nothing here
imports `cni_operator`: the operator uses this package, never the other way round.
"""
