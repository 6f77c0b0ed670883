"""The node-resident CNI server that the static shim (shim/) forwards requests to.

- `server`       CniServer: the worker threads, one request's life (peer check, read,
                 attachment lock, caller's netns, handler, answer);
- `config`       ServerConfig, the settings and their defaults;
- `cli`          `cniwarden cni-server` (node_plugin only: no test seams);
- `dispatch`     the handler that runs node_plugin.api, warmed up at start;
- `protocol`     the shim <-> server wire format (pure);
- `connection`, `peercred`, `listener`   the socket side: reading and answering one
                 connection, who the peer is, binding the socket once per node;
- `flights`, `watchdog`   requests in flight, answered once; "try again" at the deadline;
- `attachments`  one request at a time per (container id, ifname);
- `delqueue`, `replay`    the on-disk DEL queue with its retry policy, and its replay;
- `reaper`       unregisters the veth pairs DEL buried; `stranded` exits the process when
                 a thread cannot leave a foreign namespace.

May import node_plugin.api, .cni and .kernel; never cni_operator, devtools or tests.
"""
