"""Host resources a cluster creates and must remove: mounts, cgroups, links, netns.

All helpers are idempotent (removing what is already gone is fine) and act only
on names/paths the caller owns: nothing here lists-and-deletes by pattern
outside the cluster's own directory, cgroup root or interface names.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import procs

NETNS_DIR = Path("/run/netns")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount in our mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        found.append((_unescape(fields[4]), fields[sep + 1]))
    return found


def mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/")
    return [m for m, _ in mounts() if m == prefix or m.startswith(prefix + "/")]


def unmount_under(path: Path) -> None:
    """Unmount every mount at or below `path`, deepest first (repeats for stacked mounts)."""
    for _ in range(10):
        found = mounts_under(path)
        if not found:
            return
        for mount_point in sorted(set(found), key=lambda m: m.count("/"), reverse=True):
            result = procs.run(["umount", mount_point], check=False)
            if result.returncode != 0:
                procs.run(["umount", "-l", mount_point], check=False)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"could not unmount {left}")


def cgroup_mount_points() -> list[Path]:
    return [Path(m) for m, fstype in mounts() if fstype in ("cgroup", "cgroup2")]


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """`cgroup_root` in every mounted hierarchy where it exists."""
    rel = cgroup_root.strip("/")
    return [mp / rel for mp in cgroup_mount_points() if (mp / rel).is_dir()]


def create_cgroup_root(cgroup_root: str) -> None:
    """Create the kubelet's cgroupRoot in every v1 hierarchy (kubelet requires it)."""
    rel = cgroup_root.strip("/")
    for mp in cgroup_mount_points():
        target = mp / rel
        target.mkdir(exist_ok=True)
        # cpuset children start empty and refuse tasks: inherit the parent's sets.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (target / knob).exists() and not (target / knob).read_text().strip():
                (target / knob).write_text((mp / knob).read_text())


def pids_in_cgroups(cgroup_root: str) -> list[int]:
    pids: set[int] = set()
    for top in cgroup_dirs(cgroup_root):
        for dirpath, _, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError):
                    text = (Path(dirpath) / "cgroup.procs").read_text()
                    pids.update(int(p) for p in text.split())
    return sorted(pids)


def remove_cgroup_tree(cgroup_root: str) -> None:
    """Kill what still runs in the tree, then rmdir it bottom-up in every hierarchy."""
    for _ in range(5):
        pids = pids_in_cgroups(cgroup_root)
        if not pids:
            break
        procs.kill_pids(pids)
    for top in cgroup_dirs(cgroup_root):
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: w[0].count("/"), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(dirpath)
    left = cgroup_dirs(cgroup_root)
    if left:
        raise RuntimeError(f"could not remove cgroups {left}")


def link_exists(name: str, netns: Path | None = None) -> bool:
    return procs.run(["ip", "link", "show", "dev", name], check=False, netns=netns).returncode == 0


def delete_link(name: str) -> None:
    """Delete a link; one that vanishes meanwhile (its peer's netns went) is fine."""
    result = procs.run(["ip", "link", "del", "dev", name], check=False)
    if result.returncode != 0 and link_exists(name):
        raise procs.CommandError(
            result.returncode, result.args, output=result.stdout, stderr=result.stderr
        )


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def add_netns(name: str) -> Path:
    procs.run(["ip", "netns", "add", name])
    return NETNS_DIR / name


def delete_netns(name: str) -> None:
    if netns_exists(name):
        result = procs.run(["ip", "netns", "del", name], check=False)
        if result.returncode != 0 and netns_exists(name):
            # A stale bind mount whose target is busy: detach it, then drop the file.
            subprocess.run(["umount", "-l", str(NETNS_DIR / name)], check=False)
            with contextlib.suppress(FileNotFoundError):
                (NETNS_DIR / name).unlink()


def create_mount_ns(ns_dir: Path, binds: dict[Path, Path], shared: Sequence[Path] = ()) -> Path:
    """A persistent mount namespace for one node, bound at `ns_dir/mnt`.

    It starts as a slave copy of the host's mounts (host mounts flow in, the
    node's never flow out), then gets `binds` (target -> source) so the node
    sees its own directories at the standard paths; those in `shared` are made
    shared inside (still slaves of nothing on the host, so nothing mounted under
    them leaves the node), for containers that mount them with HostToContainer
    propagation. Everything mounted inside
    (container rootfs, pod volumes, netns files) goes away with the namespace.
    """
    ns_dir.mkdir(parents=True, exist_ok=True)
    # The namespace file may only be bound on a private mount (no loops).
    procs.run(["mount", "--bind", str(ns_dir), str(ns_dir)])
    procs.run(["mount", "--make-private", str(ns_dir)])
    ns_file = ns_dir / "mnt"
    ns_file.touch()
    script = "set -e\n" + "".join(f"mount --bind '{src}' '{dst}'\n" for dst, src in binds.items())
    script += "".join(f"mount --make-shared '{dst}'\n" for dst in shared)
    procs.run(["unshare", f"--mount={ns_file}", "--propagation", "slave", "sh", "-c", script])
    return ns_file


def create_uts_ns(ns_file: Path, hostname: str) -> Path:
    """A persistent UTS namespace whose hostname is `hostname`, bound at `ns_file`.

    A node's kubelet and runtime join it, so hostNetwork pods (which share their
    node's UTS namespace, as on a machine of its own) see the node's name, not
    the machine's. The bind goes away with the mounts under the node's directory.
    """
    ns_file.touch()
    procs.run(["unshare", f"--uts={ns_file}", "hostname", hostname])
    return ns_file


def read_sysctl(key: str) -> str:
    return Path("/proc/sys", key.replace(".", "/")).read_text().strip()


def write_sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key.replace(".", "/")).write_text(value)
