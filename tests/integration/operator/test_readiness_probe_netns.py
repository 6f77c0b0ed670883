"""The readiness probe against our real plugins (the package launchers), on a tmp host
root, inside a throwaway network namespace standing in for the node's: ADD + CHECK +
DEL pass in a scratch netns; with the bridge's name taken by another link (STATUS
still ok) the ADD fails; either way the DEL ran, no lease is left and no scratch
netns either. An interrupted probe's netns and lease are cleaned by the next."""

from __future__ import annotations

import ctypes
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from cni_operator import libcni
from cni_operator.node import cniprobe
from cni_operator.node.own_binaries import LauncherSource
from cni_operator.node.paths import HostPaths
from cni_operator.readiness import probe_id

from tests.threads import on_own_thread

pytestmark = [pytest.mark.root]
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)


def in_throwaway_netns(fn: Callable[[], T]) -> T:
    """Run `fn` on a thread of its own in a new network namespace (what the plugins it
    execs create lands there, and vanishes with the thread)."""

    def body() -> T:
        if _libc.unshare(cniprobe.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        return fn()

    return on_own_thread(body, 300, "the probe")


@pytest.fixture
def host(tmp_path: Path) -> tuple[HostPaths, bytes, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    paths = HostPaths(tmp_path / "host")
    paths.ensure()
    for name, data in LauncherSource().binaries().items():
        (paths.bin_dir / name).write_bytes(data)
        (paths.bin_dir / name).chmod(0o755)
    leases = tmp_path / "leases"
    conflist = {
        "cniVersion": "1.0.0",
        "name": "probed",
        "plugins": [
            {
                "type": "cniwarden-bridge",
                "bridge": "cwprobe0",
                "isGateway": True,
                "ipam": {
                    "type": "cniwarden-host-local",
                    "subnet": "10.77.0.0/28",
                    "dataDir": str(leases),
                },
            }
        ],
    }
    return paths, json.dumps(conflist).encode(), leases / "probed"


def leases_in(store: Path) -> list[str]:
    if not store.is_dir():
        return []
    return [p.name for p in store.iterdir() if p.name[0].isdigit()]


def test_probe_passes_and_leaves_nothing(host: tuple[HostPaths, bytes, Path]) -> None:
    paths, data, store = host
    got = in_throwaway_netns(lambda: cniprobe.probe(paths, "node-p", "10-p.conflist", data))
    assert got.ok, got.detail
    assert got.steps == ["ADD", "CHECK", "DEL"]
    assert leases_in(store) == [], "the probe's lease is released"
    assert list(cniprobe.netns_dir(paths).iterdir()) == [], "the scratch netns is removed"


def test_add_failing_while_status_ok_fails_the_probe_and_still_cleans_up(
    host: tuple[HostPaths, bytes, Path],
) -> None:
    paths, data, store = host

    def with_bridge_name_taken() -> cniprobe.Outcome:
        from pyroute2 import IPRoute  # noqa: PLC0415

        with IPRoute() as ipr:
            ipr.link("add", ifname="cwprobe0", kind="veth", peer="cwprobe0p")
        return cniprobe.probe(paths, "node-p", "10-p.conflist", data)

    got = in_throwaway_netns(with_bridge_name_taken)
    assert not got.ok
    assert got.detail.startswith("ADD of 10-p.conflist failed in cniwarden-bridge"), got.detail
    assert got.steps[-1] == "DEL", got.steps
    assert leases_in(store) == []
    assert list(cniprobe.netns_dir(paths).iterdir()) == []


def test_an_interrupted_probe_is_cleaned_by_the_next(host: tuple[HostPaths, bytes, Path]) -> None:
    paths, data, store = host
    stale = probe_id("node-p", 1_000_000_000, secrets.token_hex(4))

    def interrupted_then_next() -> cniprobe.Outcome:
        # A probe killed after its ADD: its netns and lease stay behind.
        cniprobe.create_netns(cniprobe.netns_dir(paths) / stale)
        network = libcni.load(data, "10-p.conflist")
        add, _ = cniprobe._chain(
            paths,
            network,
            "ADD",
            stale,
            str(cniprobe.netns_dir(paths) / stale),
            prev=None,
            deadline=1e18,
        )
        assert add.ok, add.detail
        assert len(leases_in(store)) == 1
        return cniprobe.probe(paths, "node-p", "10-p.conflist", data)

    got = in_throwaway_netns(interrupted_then_next)
    assert got.ok, got.detail
    assert leases_in(store) == [], "the interrupted probe's lease was DEL'd by the next"
    assert list(cniprobe.netns_dir(paths).iterdir()) == []
