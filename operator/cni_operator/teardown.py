"""Uninstalling without leaving anything on the nodes.

`python -m cni_operator.teardown networks` is the chart's pre-delete hook: it
deletes every CNINetwork while the controller and the agents still run, and
waits until the finalizers are gone, i.e. every node has removed our config
files and binaries and restored what it had quarantined.

`tidy_node` runs when an agent exits: it removes the agent's own state
directory only when it holds nothing (no managed network or binary, no
quarantined file). It never removes a config or a binary: an agent that is
merely restarted or upgraded leaves running pods and new pods alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cni_operator import api
from cni_operator.node import manifest as manifest_io
from cni_operator.node.paths import HostPaths
from cni_operator.node.quarantine import Quarantine

# What an idle agent leaves in its state dir; anything else there is kept.
_IDLE_FILES = {"manifest.json", "quarantine", "quarantine/journal.jsonl", "history"}


def tidy_node(host_root: Path) -> tuple[bool, str]:
    """Remove the agent's state dir if it holds nothing; (removed, why)."""
    paths = HostPaths(host_root)
    if not paths.state_dir.exists():
        return False, f"{paths.host_view(paths.state_dir)} does not exist"
    manifest = manifest_io.load(paths)
    if manifest.networks or manifest.binaries:
        return False, (
            f"keeping {paths.host_view(paths.state_dir)}: it manages "
            f"{len(manifest.networks)} network(s) and {len(manifest.binaries)} binary(ies)"
        )
    if Quarantine(paths).entries():
        return False, f"keeping {paths.host_view(paths.state_dir)}: quarantined files wait there"
    found = {str(p.relative_to(paths.state_dir)) for p in paths.state_dir.rglob("*")}
    unknown = sorted(found - _IDLE_FILES)
    if unknown:
        return False, f"keeping {paths.host_view(paths.state_dir)}: it holds {', '.join(unknown)}"
    store = Quarantine(paths).store
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if any(store.iterdir()):
            return False, f"keeping {paths.host_view(store)}: copies of moved files are there"
        store.rmdir()
    shutil.rmtree(paths.state_dir)
    return True, f"removed the empty agent state {paths.host_view(paths.state_dir)}"


def delete_networks(kubeconfig: str | None, timeout: float, interval: float = 2.0) -> int:
    """Delete every CNINetwork and wait until all are gone; 0 on success."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from cni_operator.kube import Kube  # noqa: PLC0415  (the preStop path must not pay for it)

    kube = Kube(kubeconfig)
    custom = kube.custom

    def names() -> list[str]:
        return sorted(item["metadata"]["name"] for item in kube.list_networks())

    pending = names()
    if not pending:
        print("no CNINetwork to delete", flush=True)
        return 0
    for name in pending:
        try:
            custom.delete_cluster_custom_object(api.GROUP, api.VERSION, api.NETWORK_PLURAL, name)
            print(f"deleting CNINetwork {name}", flush=True)
        except ApiException as error:
            if error.status != 404:
                raise
    deadline = time.monotonic() + timeout
    while True:
        pending = names()
        if not pending:
            print("every CNINetwork is gone: the nodes are clean", flush=True)
            return 0
        if time.monotonic() > deadline:
            print(
                f"timed out after {timeout:.0f}s; still waiting for the nodes of: "
                + ", ".join(pending)
                + " (see `kubectl get cninodestates`)",
                file=sys.stderr,
                flush=True,
            )
            return 1
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cni_operator.teardown", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("networks", help="delete every CNINetwork and wait until nodes are clean")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    return delete_networks(args.kubeconfig, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
