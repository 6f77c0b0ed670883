"""A machine-wide registry of cluster slots.

A slot fixes a cluster's ports and node subnet (see `layout.py`). Slots are
files under `<root>/.slots/`, claimed under an flock so two clusters started at
once (by different engineers, or a `make cluster-up` next to a pytest run)
never get the same one. The claim creates the cluster directory; a slot whose
cluster directory is gone is stale and is reclaimed (a crashed cluster keeps its
slot until `down` has removed what it left behind).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .layout import MAX_SLOTS, NODE_SUBNET_PREFIX, Ports


class NoFreeSlotError(RuntimeError):
    pass


@contextmanager
def registry_lock(root: Path) -> Iterator[Path]:
    """The machine-wide lock on the registry; yields its directory. Not reentrant."""
    slots = root / ".slots"
    slots.mkdir(parents=True, exist_ok=True)
    with (slots / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield slots
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _routed_subnets() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    nets = []
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            nets.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    routes = subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    for line in routes.splitlines():
        dest = line.split()[0]
        if dest != "default":
            nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


def _slot_usable(slot: int, in_use: list[ipaddress.IPv4Network]) -> bool:
    subnet = ipaddress.IPv4Network(f"{NODE_SUBNET_PREFIX}.{slot}.0/24")
    if any(subnet.overlaps(n) for n in in_use):
        return False
    return all(_port_free(p) for p in Ports.for_slot(slot).all())


def claim(root: Path, workdir: Path) -> int:
    """Claim the lowest free slot for the cluster living in `workdir`."""
    with registry_lock(root) as slots:
        in_use = _routed_subnets()
        for slot in range(MAX_SLOTS):
            marker = slots / str(slot)
            if marker.exists():
                owner = Path(marker.read_text().strip())
                if owner.exists():
                    continue
                marker.unlink()
            if _slot_usable(slot, in_use):
                workdir.mkdir(parents=True)
                marker.write_text(f"{workdir}\n")
                return slot
    raise NoFreeSlotError(f"no free cluster slot under {root} (all {MAX_SLOTS} in use)")


def release(root: Path, slot: int, workdir: Path) -> None:
    with registry_lock(root) as slots:
        marker = slots / str(slot)
        if marker.exists() and Path(marker.read_text().strip()) == workdir:
            marker.unlink()


def claimed_workdirs(root: Path) -> list[Path]:
    """Workdirs of every cluster that holds a slot (live or crashed)."""
    slots = root / ".slots"
    if not slots.is_dir():
        return []
    return [Path(p.read_text().strip()) for p in sorted(slots.iterdir()) if p.name.isdigit()]


def others_have_real_nodes(slots_dir: Path, leaving: Path) -> bool:
    """Whether a cluster other than `leaving` has real nodes (call under the registry lock:
    a real node's directory is created under it before the node changes the machine)."""
    for marker in slots_dir.iterdir():
        if marker.name.isdigit():
            workdir = Path(marker.read_text().strip())
            if workdir != leaving and (workdir / "nodes").is_dir():
                return True
    return False


def _created_paths_file(slots_dir: Path) -> Path:
    return slots_dir / "created-host-dirs"


HOLD_PREFIX = ".cniwarden-localcluster-hold-"


def hold_mount_points(paths: list[Path], holder: str) -> None:
    """Mark each host directory as a mount point `holder` (a cluster) uses.

    Removing a directory detaches whatever other mount namespaces mounted on it
    (Linux >= 3.18), so an empty host /run/cniwarden removed by a cluster of
    another checkout or registry root (its own bookkeeping, e.g. a test's) would
    silently take every node's bind with it. A hold file keeps it non-empty (rmdir
    fails) until each holder has released it; it is seen on the host only, under
    the nodes' binds."""
    for path in paths:
        (path / f"{HOLD_PREFIX}{holder}").touch()


def release_mount_points(paths: list[Path], holder: str) -> None:
    for path in paths:
        (path / f"{HOLD_PREFIX}{holder}").unlink(missing_ok=True)


def ensure_host_dirs(root: Path, paths: list[Path]) -> None:
    """Create missing host directories (mount points for node namespaces), and
    remember which ones we created so the last cluster can remove them."""
    with registry_lock(root) as slots_dir:
        record = _created_paths_file(slots_dir)
        created = set(record.read_text().split()) if record.exists() else set()
        for path in paths:
            missing = []
            probe = path
            while not probe.exists():
                missing.append(probe)
                probe = probe.parent
            for d in reversed(missing):
                d.mkdir()
                created.add(str(d))
        if created:
            record.write_text("".join(f"{p}\n" for p in sorted(created)))


def release_host_dirs(root: Path, leaving: Path) -> None:
    """Remove the host directories clusters created, once no other cluster has
    real nodes (only empty ones: anything someone else put there stays)."""
    with registry_lock(root) as slots_dir:
        if others_have_real_nodes(slots_dir, leaving):
            return
        record = _created_paths_file(slots_dir)
        if not record.exists():
            return
        kept = []
        for path in sorted(record.read_text().split(), key=lambda p: p.count("/"), reverse=True):
            try:
                Path(path).rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                kept.append(path)
        if kept:
            record.write_text("".join(f"{p}\n" for p in sorted(kept)))
        else:
            record.unlink()
