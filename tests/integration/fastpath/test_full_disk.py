"""A full state directory: errors are clear, and nothing is lost.

The lease store and the DEL queue live on a small tmpfs the test mounts (and always
unmounts), filled to the last byte. ADD fails with code 5 naming the store and the
cause, and leaves nothing behind; DEL still works (releasing needs no space); with the
server down, a DEL that cannot be queued is answered 11 naming the queue, so the runtime
keeps it and retries. Once there is space again, everything proceeds as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.fastpath.conftest import Node, ShimEnv
from tests.integration.plugin.kernel import Netns, netns_factory, unique, veths, wait_reaped

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def state(workdir: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted at the end whatever happened."""
    mount = workdir / "state"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        done = subprocess.run(["umount", str(mount)], check=False, capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def shim(shim_dir: Path, workdir: Path, state: Path) -> ShimEnv:
    """The shims queue DELs on the small tmpfs too."""
    return ShimEnv(shim_dir, workdir / "run" / "cni.sock", state / "del-queue")


@pytest.fixture
def pods() -> Iterator[list[Netns]]:
    with netns_factory("cwfd-") as make:
        yield [make() for _ in range(3)]


@contextlib.contextmanager
def full(directory: Path) -> Iterator[Callable[[], None]]:
    """Fills the filesystem of `directory` to the last byte, and yields what fills it up
    again (after something freed space); frees it all afterwards."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def top_up() -> None:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while os.write(fd, b"\0" * 4096):
                pass

    try:
        top_up()
        yield top_up
    finally:
        os.close(fd)
        filler.unlink()


def test_a_full_state_directory_gives_clear_errors_and_loses_nothing(
    node: Node, workdir: Path, state: Path, pods: list[Netns]
) -> None:
    config: dict[str, Any] = {
        "cniVersion": "1.1.0",
        "name": unique("full"),
        "type": "cniwarden-bridge",
        "bridge": unique("cwbr"),
        "isGateway": True,
        "ipam": {
            "type": "cniwarden-host-local",
            "subnet": "10.89.0.0/24",
            "dataDir": str(state / "ipam"),
        },
    }
    store = state / "ipam" / config["name"]
    node.start_server()
    results = {}
    for i in range(2):
        run = node.cni("ADD", config, pods[i], f"pod{i}")
        assert run.returncode == 0, run.stdout
        results[f"pod{i}"] = json.loads(run.stdout)
    before = {p.name: p.read_bytes() for p in store.iterdir()}

    with full(state) as top_up:
        run = node.cni("ADD", config, pods[2], "pod2")
        assert run.returncode == 1, run.stdout
        error = json.loads(run.stdout)
        assert error["code"] == 5, error
        assert "host-local store" in error["msg"] and "No space left on device" in error["msg"]
        assert {p.name: p.read_bytes() for p in store.iterdir()} == before, "nothing changed"
        assert pods[2].link("eth0") is None, "the failed ADD was undone"
        # DEL needs no space: pod1 goes.
        prev = {**config, "prevResult": results.pop("pod1")}
        assert node.cni("DEL", prev, pods[1], "pod1").returncode == 0
        # The server is down and the queue has no room: the DEL is refused, never lost.
        node.stop_server()
        top_up()  # what pod1's lease freed
        prev0 = {**config, "prevResult": results["pod0"]}
        run = node.cni("DEL", prev0, pods[0], "pod0")
        assert run.returncode == 1, run.stdout
        error = json.loads(run.stdout)
        assert error["code"] == 11, error
        assert str(node.shim.queue) in error["details"] and "No space left" in error["details"]
        assert node.shim.queued() == []

    # Space again: the runtime's retries go through.
    node.start_server()
    run = node.cni("DEL", prev0, pods[0], "pod0")
    assert run.returncode == 0, run.stdout
    run = node.cni("ADD", config, pods[2], "pod2")
    assert run.returncode == 0, run.stdout
    address = json.loads(run.stdout)["ips"][0]["address"]
    wait_reaped(node.host)
    leases = {p.name: p.read_bytes() for p in store.iterdir() if p.name[0].isdigit()}
    assert leases == {address.split("/")[0]: b"pod2\r\neth0"}
    assert len(veths(node.host)) == 1
    assert [p.name for p in store.iterdir() if p.name.startswith(".")] == [], "no temp file"
