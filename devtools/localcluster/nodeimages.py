"""The images every real node holds: built once per cluster, imported into each
node's runtime (nothing is ever pulled): `ctr images import` into containerd,
`skopeo copy` into CRI-O's containers-storage.

Separate from `images.py` (which only writes OCI tarballs, no daemon involved)
because importing needs the node's running runtime.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from . import clusterdns, crio, images, procs
from .containerd import ctr
from .layout import BUSYBOX_IMAGE, PAUSE_IMAGE, Layout, NodeLayout
from .toolpaths import tool


def build_images(layout: Layout) -> list[tuple[Path, str]]:
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
    return [(pause, PAUSE_IMAGE), (busybox, BUSYBOX_IMAGE), (coredns, clusterdns.COREDNS_IMAGE)]


def import_archive(node: NodeLayout, tarball: Path, reference: str) -> None:
    """One OCI image tarball into the node's runtime, named `reference`."""
    if node.is_crio:
        crio.import_image(node, tarball, reference)
    else:
        ctr(node, "images", "import", "--snapshotter", "overlayfs", str(tarball))


def listed_images(node: NodeLayout) -> set[str]:
    if node.is_crio:
        out = procs.run(
            [
                str(tool("crictl")),
                "--runtime-endpoint",
                f"unix://{node.runtime_socket}",
                "--timeout",
                "20s",
                "images",
                "-o",
                "json",
            ],
            check=True,
        ).stdout
        return {tag for image in json.loads(out)["images"] for tag in image.get("repoTags") or []}
    return set(ctr(node, "images", "ls", "-q").stdout.split())


def import_images(layout: Layout, node: NodeLayout) -> None:
    for tarball, reference in build_images(layout):
        import_archive(node, tarball, reference)
    missing = {PAUSE_IMAGE, BUSYBOX_IMAGE, clusterdns.COREDNS_IMAGE} - listed_images(node)
    if missing:
        raise procs.ComponentError(f"images not imported into {node.name}: {sorted(missing)}")


def import_archives(node: NodeLayout, archives: Sequence[Path]) -> None:
    """Image tarballs (OCI layout or docker-archive) into the node's runtime, unpacked
    for the CRI's snapshotter (containerd) or copied into containers-storage under
    the names they carry (CRI-O), so kubelet starts them without a pull."""
    for tarball in archives:
        if node.is_crio:
            for reference in images.archive_references(tarball):
                crio.import_image(node, tarball, reference)
        else:
            ctr(node, "images", "import", "--snapshotter", "overlayfs", str(tarball))
