"""`cniwarden gc`: leak repair on demand, on the node, without the API server.

The same code the agent runs on its schedule (`Reconciler.collect_leaked` ->
`node/pools.reclaim_leaked`): live sandboxes from the runtime over CRI, then the
managed pools' leases older than the grace whose sandbox is gone are released under
the store's lock. Exit 0: done (maybe nothing to do); 1: some store could not be
handled; 2: the runtime could not be asked, so nothing was released.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

from cni_operator.node import manifest as manifest_io
from cni_operator.node.cri import RuntimeProbe
from cni_operator.node.paths import HostPaths
from cni_operator.node.pools import reclaim_leaked


def main(
    host_root: Path,
    *,
    runtime_endpoint: str | None = None,
    dry_run: bool = False,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    paths = HostPaths(host_root)
    try:
        manifest = manifest_io.load(paths)
    except manifest_io.ManifestError as error:
        print(f"cniwarden gc: {error}; nothing released", file=sys.stderr)
        return 1
    probe = RuntimeProbe(host_root, runtime_endpoint)
    try:
        listing = probe.list_sandboxes()
    finally:
        probe.close()
    if listing.ids is None:
        message = f"cannot list the runtime's sandboxes ({listing.error}); nothing released"
        if as_json:
            json.dump({"released": [], "errors": [message], "dryRun": dry_run}, out)
            out.write("\n")
        else:
            print(f"cniwarden gc: {message}", file=sys.stderr)
        return 2
    released, errors = reclaim_leaked(paths, manifest, listing, dry_run=dry_run)
    if as_json:
        json.dump(
            {
                "runtime": listing.endpoint,
                "sandboxes": len(listing.ids),
                "dryRun": dry_run,
                "released": [vars(r) for r in released],
                "errors": errors,
            },
            out,
            indent=2,
        )
        out.write("\n")
    else:
        verb = "would release" if dry_run else "released"
        out.write(
            f"cniwarden gc: {len(listing.ids)} live sandbox(es) on {listing.endpoint}; "
            f"{verb} {len(released)} leaked lease(s)\n"
        )
        for r in released:
            out.write(f"  {r.lease_network} {r.ip}  (sandbox {r.container_id[:16]} gone)\n")
        for message in errors:
            out.write(f"  error: {message}\n")
    return 1 if errors else 0
