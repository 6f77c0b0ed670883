"""Three-way CNI latency benchmark: reference Go plugins, standalone Python plugins, shim+server.

One run, one process tree, the same sandboxes: every sandbox gets one attachment from each
implementation (different interface names, different bridges and subnets), and the order
of the implementations rotates per sandbox so machine noise spreads evenly. Each verb is
timed as a whole process, from exec to exit, as a runtime sees it.

    sudo .venv/bin/python -m bench.fastpath [--sandboxes 40] [--rounds 3] [--masq]

Everything lives in network namespaces the bench creates (a "host" namespace the bench
and the server run in, plus the sandboxes) and is deleted at the end, even on failure.
Prints a Markdown report and writes it with the raw samples to bench/results/.

Modules: `impls` (the three implementations and running one plugin process), `launch`
(the cni-servers and what /proc says about them), `measure` (the measurements),
`handler_profile` (node_plugin.api.handle in this process), `report`, `run` (main).
"""
