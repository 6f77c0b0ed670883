"""Container images made locally as OCI-layout tarballs: nothing is ever pulled.

- pause: a tiny static C program (reaps children, exits on SIGINT/SIGTERM).
- busybox: Debian's static busybox with a symlink per applet.

Layers are written deterministically (fixed mtimes and owners), so the same
inputs give the same digests. `ctr images import` reads the image name from the
`io.containerd.image.name` annotation.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import BUSYBOX_IMAGE, PAUSE_IMAGE

BUSYBOX_BINARY = Path("/bin/busybox")

PAUSE_C = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = on_term};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("sigaction");
    return 1;
  }
  for (;;) pause();
}
"""


@dataclass(frozen=True)
class Entry:
    """One file in a layer: a regular file (data), a directory or a symlink."""

    path: str
    data: bytes | None = None
    mode: int = 0o755
    link: str | None = None
    is_dir: bool = False


def _layer(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = e.mode
            if e.is_dir:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                info.mode = 0o777
                tar.addfile(info)
            else:
                data = e.data or b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_tarball(
    out: Path, name: str, entries: list[Entry], config: dict[str, object]
) -> Path:
    """Write an OCI image layout tarball with one gzip layer, named `name`."""
    layer = _layer(entries)
    layer_gz = gzip.compress(layer, mtime=0)
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "cniwarden devtools.localcluster.images"}],
    }
    config_blob = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _digest(config_blob),
            "size": len(config_blob),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": _digest(layer_gz),
                "size": len(layer_gz),
            }
        ],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": _digest(manifest_blob),
                "size": len(manifest_blob),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for blob in (layer_gz, config_blob, manifest_blob):
        files["blobs/sha256/" + _digest(blob).split(":", 1)[1]] = blob
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out


def compile_pause() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pause.c"
        src.write_text(PAUSE_C)
        binary = Path(tmp) / "pause"
        subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(src)],
            check=True,
            capture_output=True,
            text=True,
        )
        return binary.read_bytes()


def build_pause(out: Path) -> Path:
    entries = [Entry("pause", compile_pause())]
    return write_oci_tarball(out, PAUSE_IMAGE, entries, {"Entrypoint": ["/pause"]})


def busybox_applets(binary: Path = BUSYBOX_BINARY) -> list[str]:
    out = subprocess.run([str(binary), "--list"], check=True, capture_output=True, text=True)
    return sorted({a for a in out.stdout.split() if a and a != "busybox"})


def build_busybox(out: Path, binary: Path = BUSYBOX_BINARY) -> Path:
    entries = [
        Entry("bin", is_dir=True),
        Entry("bin/busybox", binary.read_bytes()),
        *[Entry(f"bin/{a}", link="busybox") for a in busybox_applets(binary)],
        Entry("etc", is_dir=True),
        Entry(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
            mode=0o644,
        ),
        Entry("etc/group", b"root:x:0:\nnogroup:x:65534:\n", mode=0o644),
        Entry("root", is_dir=True, mode=0o700),
        Entry("tmp", is_dir=True, mode=0o1777),
        Entry("var", is_dir=True),
    ]
    config: dict[str, object] = {
        "Cmd": ["sh"],
        "Env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],
    }
    return write_oci_tarball(out, BUSYBOX_IMAGE, entries, config)


def _archive_member(tarball: Path, name: str) -> dict[str, Any] | list[Any] | None:
    with tarfile.open(tarball) as archive:
        try:
            member = archive.extractfile(name)
        except KeyError:
            return None
        if member is None:
            return None
        loaded: dict[str, Any] | list[Any] = json.loads(member.read())
        return loaded


def is_docker_archive(tarball: Path) -> bool:
    """`docker save` / `buildah push docker-archive:` layout (manifest.json, no index.json)."""
    return _archive_member(tarball, "index.json") is None and isinstance(
        _archive_member(tarball, "manifest.json"), list
    )


def archive_references(tarball: Path) -> list[str]:
    """The image names a tarball carries: docker-archive RepoTags, or an OCI index's
    `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations."""
    manifest = _archive_member(tarball, "manifest.json")
    if isinstance(manifest, list) and _archive_member(tarball, "index.json") is None:
        return [tag for entry in manifest for tag in entry.get("RepoTags") or []]
    index = _archive_member(tarball, "index.json")
    refs = []
    if isinstance(index, dict):
        for entry in index.get("manifests", []):
            notes = entry.get("annotations") or {}
            ref = notes.get("io.containerd.image.name") or notes.get(
                "org.opencontainers.image.ref.name"
            )
            if ref:
                refs.append(ref)
    if not refs:
        raise ValueError(f"{tarball} names no image (no RepoTags, no ref.name annotation)")
    return refs
