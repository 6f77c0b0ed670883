"""A kind node image built here, offline (images/kind-node/Dockerfile).

kind needs `kindest/node`, which no registry serves to this machine. This builds
an equivalent from what is here: the pinned Debian base (`make images` makes it
with mmdebstrap when it cannot be pulled) plus Debian's systemd, containerd and
runc; kind's own node files (entrypoint, systemd units, containerd config) from
the kind Go module; kubeadm, kubelet and kubectl built from the pinned
Kubernetes; and the control-plane images kubeadm runs, made from the same
binaries (`kubeadm config images list` names them):

- kube-apiserver, kube-controller-manager, kube-scheduler: FROM scratch, the
  static binary at /usr/local/bin;
- kube-proxy: the Debian base with iptables and conntrack;
- etcd: the pinned etcd build (tools/versions.env), under the tag kubeadm asks
  for (the image's label says which etcd it really is);
- pause: the local cluster's static pause.

CoreDNS is left out (kind waits for neither it nor a CNI). With Docker:

    python -m devtools.ship.kindnode              # -> kindest/node:<k8s>-cniwarden
    kind create cluster --config kind-config.yaml --image kindest/node:v1.33.13-cniwarden
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from devtools.localcluster.images import Entry, compile_pause, write_oci_tarball
from devtools.localcluster.toolpaths import REPO_ROOT, tool
from devtools.ship.images import ImageBuildError, _run, base_image, ensure_base, machine_lock

KIND_MODULE = "sigs.k8s.io/kind"
KUBEADM_MODULE_DIR = REPO_ROOT / "tools" / "k8s-extra"
NODE_TAG_SUFFIX = "cniwarden"


def _log(message: str) -> None:
    print(f"kindnode: {message}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    out = {}
    for line in (REPO_ROOT / "tools" / "versions.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def kind_files(version: str) -> Path:
    """kind's images/base/files, from the kind module in Go's module cache."""
    out = _run(["go", "mod", "download", "-json", f"{KIND_MODULE}@{version}"], timeout=600)
    directory = Path(json.loads(out.stdout)["Dir"]) / "images" / "base" / "files"
    if not directory.is_dir():
        raise ImageBuildError(f"{directory} is missing from {KIND_MODULE}@{version}")
    return directory


def kubeadm(dest: Path, kubernetes: str) -> Path:
    """kubeadm at the pinned Kubernetes version (not part of `make tools`)."""
    with tempfile.TemporaryDirectory(prefix="cniwarden-kubeadm-") as tmp:
        module = Path(tmp) / "module"
        shutil.copytree(KUBEADM_MODULE_DIR, module)
        env = {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false", "GOTOOLCHAIN": "local"}
        _run(
            ["go", "-C", str(module), "get", f"k8s.io/kubernetes/cmd/kubeadm@{kubernetes}"],
            timeout=900,
            env=env,
        )
        _run(
            [
                "go",
                "-C",
                str(module),
                "build",
                "-mod=mod",
                "-trimpath",
                "-ldflags",
                kubernetes_ldflags(kubernetes),
                "-o",
                str(dest),
                "k8s.io/kubernetes/cmd/kubeadm",
            ],
            timeout=1800,
            env=env,
        )
    return dest


def kubernetes_ldflags(version: str) -> str:
    minor = version.removeprefix("v1.").split(".", 1)[0]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor=1",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _commit_image(container: str, ref: str, archive: Path) -> Path:
    _run(["buildah", "commit", "-q", container, ref], timeout=600)
    archive.unlink(missing_ok=True)
    _run(["buildah", "push", "-q", ref, f"docker-archive:{archive}:{ref}"], timeout=600)
    return archive


def binary_image(ref: str, binary: Path, archive: Path, labels: dict[str, str]) -> Path:
    """FROM scratch, the static `binary` at /usr/local/bin (kubeadm's static pods
    call it by name)."""
    container = _run(["buildah", "from", "scratch"], timeout=60).stdout.strip()
    try:
        _run(
            ["buildah", "copy", "-q", container, str(binary), f"/usr/local/bin/{binary.name}"],
            timeout=300,
        )
        config = ["buildah", "config", "--env", "PATH=/usr/local/bin:/usr/bin:/bin"]
        for key, value in labels.items():
            config += ["--label", f"{key}={value}"]
        _run([*config, container], timeout=60)
        return _commit_image(container, ref, archive)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def kube_proxy_image(ref: str, binary: Path, archive: Path) -> Path:
    """kube-proxy needs iptables and conntrack beside it: the Debian base with them."""
    container = _run(["buildah", "from", "--pull=never", base_image()], timeout=60).stdout.strip()
    try:
        _run(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                container,
                "sh",
                "-c",
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
                " --no-install-recommends iptables nftables conntrack"
                " && rm -rf /var/lib/apt/lists/*",
            ],
            timeout=900,
        )
        _run(
            ["buildah", "copy", "-q", container, str(binary), "/usr/local/bin/kube-proxy"],
            timeout=300,
        )
        return _commit_image(container, ref, archive)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def control_plane_images(out: Path, kubeadm_bin: Path, kubernetes: str, etcd: str) -> None:
    listed = _run(
        [str(kubeadm_bin), "config", "images", "list", "--kubernetes-version", kubernetes],
        timeout=60,
    ).stdout.split()
    for ref in listed:
        name = ref.rsplit("/", 1)[1].split(":", 1)[0]
        archive = out / f"{name}.tar"
        if name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            binary_image(ref, tool(name).resolve(), archive, {})
        elif name == "kube-proxy":
            kube_proxy_image(ref, tool("kube-proxy").resolve(), archive)
        elif name == "etcd":
            binary_image(ref, tool("etcd").resolve(), archive, {"io.cniwarden.etcd-version": etcd})
        elif name == "pause":
            write_oci_tarball(
                archive, ref, [Entry("pause", compile_pause())], {"Entrypoint": ["/pause"]}
            )
        else:
            _log(f"{ref}: left out (not needed to create the cluster)")
            continue
        _log(f"{ref}: {archive.stat().st_size // 1_000_000} MB")


def build(tag: str | None = None, docker: bool = True) -> str:
    pins = versions()
    kubernetes, etcd = pins["KUBERNETES_VERSION"], pins["ETCD_VERSION"]
    ref = tag or f"kindest/node:{kubernetes}-{NODE_TAG_SUFFIX}"
    with tempfile.TemporaryDirectory(prefix="cniwarden-kindnode-") as tmp, machine_lock():
        ctx = Path(tmp)
        ensure_base(base_image())
        shutil.copytree(kind_files(pins["KIND_VERSION"]), ctx / "kind-base")
        shutil.copytree(REPO_ROOT / "images" / "kind-node", ctx / "kind-node")
        (ctx / "bin").mkdir()
        for name in ("kubelet", "kubectl"):
            shutil.copy2(tool(name).resolve(), ctx / "bin" / name)
        _log(f"building kubeadm {kubernetes}")
        kubeadm(ctx / "bin" / "kubeadm", kubernetes)
        (ctx / "images").mkdir()
        control_plane_images(ctx / "images", ctx / "bin" / "kubeadm", kubernetes, etcd)
        _run(
            [
                "buildah",
                "bud",
                "--layers",
                "--isolation",
                "chroot",
                "--pull=never",
                "-f",
                str(ctx / "kind-node" / "Dockerfile"),
                "--build-arg",
                f"KUBERNETES_VERSION={kubernetes}",
                "-t",
                ref,
                str(ctx),
            ],
            timeout=3600,
        )
        if docker:
            archive = ctx / "node.tar"
            _run(["buildah", "push", "-q", ref, f"docker-archive:{archive}:{ref}"], timeout=900)
            _run(["docker", "load", "-i", str(archive)], timeout=900)
    return ref


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.ship.kindnode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tag", help="image reference (default kindest/node:<k8s>-cniwarden)")
    parser.add_argument("--no-docker", action="store_true", help="leave it in buildah's store")
    args = parser.parse_args(argv)
    try:
        print(build(args.tag, docker=not args.no_docker))
    except ImageBuildError as error:
        print(f"kindnode: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
