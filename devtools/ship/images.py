"""`make images`: both cniwarden images built from images/Dockerfile on this machine.

The builder is buildah (Debian's 1.28), `bud --layers --isolation chroot`:
- no daemon: nothing to start, stop or keep away from the tests' network
  namespaces (dockerd's iptables setup turns the FORWARD policy to DROP);
- RUN steps run chrooted in the host's network namespace, so no CNI network is
  made for the build (podman/buildah's default would add a bridge and a
  conflist under /etc/cni/net.d) and no capability or rlimit is asked for that
  this VM's bounding set lacks (Docker 20.10 and podman 4.3 both trip on
  CAP_SYS_RESOURCE);
- a layer cache keyed on each instruction and the content it copies: unchanged
  inputs give the same image ID without running anything.

The pinned base (`ARG DEBIAN_IMAGE` in the Dockerfile) is pulled when a
registry answers; here none does, so the same name is made locally from
Debian's packages with mmdebstrap (minbase, docs and man pages left out, like
Debian's -slim images). A user with a registry gets the pinned base unchanged.

The images are written as docker-archive tarballs under build/images/ (for
`ctr images import` on the local cluster's nodes), re-exported only when the
image ID changed.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.localcluster.toolpaths import REPO_ROOT, system_tool

DOCKERFILE = REPO_ROOT / "images" / "Dockerfile"
OUT_DIR = REPO_ROOT / "build" / "images"
REGISTRY = "ghcr.io/cniwarden"
TARGETS = ("controller", "agent")
LOCK = Path("/var/tmp/cniwarden-images.lock")
# Debian's -slim recipe (debuerreotype): what a container never reads.
SLIM_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/lintian/*",
)
# Fixed file times in the base's tarball: the same packages give the same layer.
SOURCE_DATE_EPOCH = "1700000000"


class ImageBuildError(RuntimeError):
    pass


def _run(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-40:])
        raise ImageBuildError(f"{' '.join(argv)} failed ({out.returncode}):\n{tail}")
    return out


def _log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def base_image() -> str:
    """The pinned base of the Dockerfile, fully qualified as buildah stores it."""
    match = re.search(r"^ARG DEBIAN_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise ImageBuildError(f"{DOCKERFILE}: no `ARG DEBIAN_IMAGE=<pinned base>`")
    return qualified(match.group(1))


def qualified(ref: str) -> str:
    """`debian:12.8-slim` -> `docker.io/library/debian:12.8-slim` (Docker's short names)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def image_ref(target: str, tag: str) -> str:
    return f"{REGISTRY}/cniwarden-{target}:{tag}"


def image_id(ref: str) -> str | None:
    out = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return out.stdout.strip() or None if out.returncode == 0 else None


def debian_suite(ref: str) -> str:
    """The Debian suite of a pinned `debian:<major>...` tag (12 -> bookworm)."""
    suites = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
    tag = ref.rsplit(":", 1)[1]
    major = tag.split(".", 1)[0].split("-", 1)[0]
    if major not in suites:
        raise ImageBuildError(f"{ref}: cannot tell the Debian release from tag {tag!r}")
    return suites[major]


def apt_sources() -> str:
    """The host's Debian sources (its mirror), else mmdebstrap's default."""
    for candidate in (
        Path("/etc/apt/sources.list.d/debian.sources"),
        Path("/etc/apt/sources.list"),
    ):
        if candidate.exists() and candidate.read_text().strip():
            return str(candidate)
    return "http://deb.debian.org/debian"


def ensure_base(ref: str) -> str:
    """The pinned base in buildah's store: present, pulled, or made with mmdebstrap."""
    found = image_id(ref)
    if found:
        return "present"
    pulled = subprocess.run(
        ["buildah", "pull", "--retry", "0", "-q", ref],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if pulled.returncode == 0:
        return "pulled"
    _log(f"cannot pull {ref} ({pulled.stderr.strip().splitlines()[-1:]}); making it locally")
    with tempfile.TemporaryDirectory(prefix="cniwarden-base-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        excludes = [f"--dpkgopt={e}" for e in SLIM_EXCLUDES]
        _run(
            [
                str(system_tool("mmdebstrap")),
                "--variant=minbase",
                "--format=tar",
                *excludes,
                debian_suite(ref),
                str(tarball),
                apt_sources(),
            ],
            timeout=1200,
            env={"SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        )
        container = _run(["buildah", "from", "scratch"], timeout=60).stdout.strip()
        try:
            _run(["buildah", "add", "-q", container, str(tarball), "/"], timeout=600)
            _run(
                [
                    "buildah",
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--cmd",
                    "bash",
                    container,
                ],
                timeout=60,
            )
            _run(["buildah", "commit", "-q", container, ref], timeout=600)
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return "made with mmdebstrap"


def pip_ca_bundle() -> Path | None:
    """The CA bundle the host's pip uses (PIP_CERT, or `cert` in /etc/pip.conf):
    PyPI behind a TLS-inspecting proxy needs it inside the build too."""
    configured = os.environ.get("PIP_CERT")
    if not configured:
        parser = configparser.ConfigParser()
        with contextlib.suppress(configparser.Error):
            parser.read("/etc/pip.conf")
        configured = parser.get("global", "cert", fallback="")
    return Path(configured) if configured and Path(configured).is_file() else None


def build(target: str, tag: str, context: Path = REPO_ROOT) -> str:
    """`buildah bud` of one target from `context` (a checkout of the repository: this
    one, or an earlier version's); returns the image ID (unchanged inputs: cached)."""
    argv = [
        "buildah",
        "bud",
        "--layers",
        "--isolation",
        "chroot",
        "--pull=never",
        "-f",
        str(context / DOCKERFILE.relative_to(REPO_ROOT)),
        "--target",
        target,
        "-t",
        image_ref(target, tag),
    ]
    bundle = pip_ca_bundle()
    if bundle is not None:
        argv += [
            "-v",
            f"{bundle}:/run/cniwarden-build-ca.crt:ro",
            "--build-arg",
            "PIP_CA_BUNDLE=/run/cniwarden-build-ca.crt",
        ]
    _run([*argv, str(context)], timeout=1800)
    found = image_id(image_ref(target, tag))
    if found is None:
        raise ImageBuildError(f"buildah built {image_ref(target, tag)} but cannot inspect it")
    return found


@dataclass(frozen=True)
class BuiltImage:
    target: str
    ref: str
    id: str
    archive: Path
    size: str


def image_size(ref: str) -> str:
    """The unpacked size as buildah reports it ("109 MB")."""
    out = _run(["buildah", "images", "--json", ref], timeout=60).stdout
    entries = json.loads(out)
    return str(entries[0]["size"]) if entries else "?"


def export(target: str, tag: str, built_id: str) -> Path:
    """The image as a docker-archive tarball named by its reference (what `ctr
    images import` reads); rewritten only when the image ID changed."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    archive = OUT_DIR / f"cniwarden-{target}-{tag}.tar"
    stamp = archive.with_suffix(".id")
    ref = image_ref(target, tag)
    if archive.exists() and stamp.exists() and stamp.read_text() == f"{ref} {built_id}":
        return archive
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _run(["buildah", "push", "-q", built_id, f"docker-archive:{tmp}:{ref}"], timeout=600)
    os.replace(tmp, archive)
    stamp.write_text(f"{ref} {built_id}")
    return archive


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One build at a time on the machine (clones share buildah's store)."""
    with LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def chart_app_version(context: Path = REPO_ROOT) -> str:
    text = (context / "charts" / "cniwarden" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?', text, re.MULTILINE)
    if match is None:
        raise ImageBuildError("charts/cniwarden/Chart.yaml has no appVersion")
    return match.group(1)


def build_all(
    tag: str | None = None, targets: Sequence[str] = TARGETS, context: Path | None = None
) -> list[BuiltImage]:
    """Both images, tagged with the chart's appVersion by default, and their archives
    (`context`: another checkout of the repository, e.g. a previous version)."""
    context = context or REPO_ROOT
    tag = tag or chart_app_version(context)
    built = []
    with machine_lock():
        started = time.monotonic()
        how = ensure_base(base_image())
        _log(f"base {base_image()}: {how} ({time.monotonic() - started:.1f}s)")
        for target in targets:
            started = time.monotonic()
            found = build(target, tag, context)
            archive = export(target, tag, found)
            ref = image_ref(target, tag)
            built.append(BuiltImage(target, ref, found, archive, image_size(ref)))
            _log(f"{ref}: {found[:12]}, {built[-1].size} ({time.monotonic() - started:.1f}s)")
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.ship.images", description=__doc__)
    parser.add_argument("--tag", default=None, help="image tag (default: the chart's appVersion)")
    parser.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: both)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown image target(s) {unknown}; choose from {list(TARGETS)}")
    try:
        for image in build_all(args.tag, args.targets or TARGETS):
            print(f"{image.ref} {image.id[:12]} {image.size} {image.archive}")
    except ImageBuildError as error:
        print(f"images: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
