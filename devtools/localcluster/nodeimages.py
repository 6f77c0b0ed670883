"""The images every real node holds: built once per cluster, imported into each
node's containerd with `ctr` (nothing is ever pulled).

Separate from `images.py` (which only writes OCI tarballs, no daemon involved)
because importing needs the node's running containerd.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import clusterdns, images, procs
from .containerd import ctr
from .layout import BUSYBOX_IMAGE, PAUSE_IMAGE, Layout, NodeLayout


def build_images(layout: Layout) -> list[Path]:
    """The pause, busybox and CoreDNS tarballs (built once per cluster, shared by its nodes)."""
    pause = layout.images_dir / "pause.tar"
    busybox = layout.images_dir / "busybox.tar"
    coredns = layout.images_dir / "coredns.tar"
    if not pause.exists():
        images.build_pause(pause)
    if not busybox.exists():
        images.build_busybox(busybox)
    if not coredns.exists():
        clusterdns.build_coredns(coredns)
    return [pause, busybox, coredns]


def import_images(layout: Layout, node: NodeLayout) -> None:
    import_archives(node, build_images(layout))
    listed = ctr(node, "images", "ls", "-q").stdout.split()
    missing = {PAUSE_IMAGE, BUSYBOX_IMAGE, clusterdns.COREDNS_IMAGE} - set(listed)
    if missing:
        raise procs.ComponentError(f"images not imported into {node.name}: {sorted(missing)}")


def import_archives(node: NodeLayout, archives: Sequence[Path]) -> None:
    """Image tarballs (OCI layout or docker-archive) into the node's containerd,
    unpacked for the CRI's snapshotter so kubelet starts them without a pull."""
    for tarball in archives:
        ctr(node, "images", "import", "--snapshotter", "overlayfs", str(tarball))
