"""The test images e2e.test runs, built here (nothing is pulled) as OCI tarballs.

agnhost: the `agnhost` binary (`make conformance` builds it at the tag
`e2e.test --list-images` names) plus the tools upstream's Alpine-based image
carries and the tests exec in it: bash, curl, dig/nslookup and getent (DNS tests), an
`nc` with `-u` (netcat-openbsd; node-to-pod UDP checks) and busybox for the rest.
Dynamic binaries come with the libraries `ldd` names. Like upstream's image it
holds `/localhost.crt` and `/localhost.key` from agnhost's source (`porter`
serves its TLS ports with them; without them the Proxy spec's https paths fail). `/bin/sh` is bash:
Debian's static busybox shell runs its own built-in `nc` (no `-u`) before the
one on PATH, so `sh -c "... | nc -u ..."` would fail with busybox as sh.

The other images the chosen tests name are aliases (`run.load_test_images`):
pause and busybox are the local cluster's own, and the DNS specs'
`jessie-dnsutils` querier is this image (it only needs bash, dig and nslookup).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from devtools.localcluster.images import (
    BUSYBOX_BINARY,
    Entry,
    busybox_applets,
    write_oci_tarball,
)
from devtools.localcluster.toolpaths import REPO_ROOT

# Host binary -> where it goes in the image (Debian packages: scripts/install-debian-packages.sh).
AGNHOST_TOOLS = {
    "/usr/bin/bash": "bin/bash",
    "/usr/bin/curl": "usr/bin/curl",
    "/usr/bin/dig": "usr/bin/dig",
    "/usr/bin/nslookup": "usr/bin/nslookup",
    "/usr/bin/host": "usr/bin/host",
    "/usr/bin/nc.openbsd": "usr/bin/nc",
    "/usr/bin/getent": "usr/bin/getent",  # the DNS specs' /etc/hosts and name checks
}
# The module e2e.test and agnhost are built from (tools/build-tools.sh).
K8S_EXTRA = REPO_ROOT / "tools" / "k8s-extra"
PORTER_CERTS = ("localhost.crt", "localhost.key")
_LDD_PATH = re.compile(r"(/\S+) \(0x[0-9a-f]+\)$")


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries (and the loader) `binary` needs, as `ldd` resolves them here."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
    )
    if out.returncode != 0:  # a static binary
        return []
    found = []
    for line in out.stdout.splitlines():
        match = _LDD_PATH.search(line.strip())
        if match:
            found.append(Path(match.group(1)))
    return found


def porter_dir(module_root: Path = K8S_EXTRA) -> Path:
    """agnhost's `porter` sources (with its TLS pair) in the k8s.io/kubernetes module
    that agnhost was built from."""
    out = subprocess.run(
        ["go", "list", "-mod=readonly", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes"],
        cwd=module_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    found = Path(out.stdout.strip()) / "test/images/agnhost/porter"
    if out.returncode != 0 or not out.stdout.strip() or not found.is_dir():
        raise RuntimeError(
            f"cannot find agnhost's porter sources (k8s.io/kubernetes in {module_root}): "
            f"{out.stderr.strip() or found}; run `TOOLS=conformance ./tools/build-tools.sh`"
        )
    return found


def agnhost_entries(agnhost: Path, porter: Path) -> list[Entry]:
    entries: dict[str, Entry] = {}

    def add_dirs(path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            entries.setdefault(d, Entry(d, is_dir=True))

    def add_file(host: Path, inside: str) -> None:
        add_dirs(inside)
        entries[inside] = Entry(inside, host.read_bytes(), mode=0o755)

    add_file(agnhost, "agnhost")
    for name in PORTER_CERTS:  # at the working directory, where porter opens them
        entries[name] = Entry(name, (porter / name).read_bytes(), mode=0o644)
    add_file(BUSYBOX_BINARY, "bin/busybox")
    taken = {Path(p).name for p in AGNHOST_TOOLS.values()} | {"sh"}
    for applet in busybox_applets():
        if applet not in taken:
            entries[f"bin/{applet}"] = Entry(f"bin/{applet}", link="busybox")
    for host, inside in AGNHOST_TOOLS.items():
        add_file(Path(host), inside)
        for lib in shared_libraries(Path(host)):
            add_file(lib.resolve(), str(lib).lstrip("/"))
    entries["bin/sh"] = Entry("bin/sh", link="bash")
    for d in ("etc", "tmp", "root", "var", "usr/sbin", "sbin"):
        entries.setdefault(d, Entry(d, is_dir=True, mode=0o1777 if d == "tmp" else 0o755))
    entries["etc/passwd"] = Entry(
        "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n", 0o644
    )
    entries["etc/group"] = Entry("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)
    entries["etc/nsswitch.conf"] = Entry(
        "etc/nsswitch.conf", b"hosts: files dns\npasswd: files\ngroup: files\n", 0o644
    )
    return sorted(entries.values(), key=lambda e: e.path)


def build_agnhost(out: Path, agnhost: Path, image: str, porter: Path | None = None) -> Path:
    config: dict[str, object] = {
        "Entrypoint": ["/agnhost"],
        "Cmd": ["pause"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
    }
    entries = agnhost_entries(agnhost, porter or porter_dir())
    return write_oci_tarball(out, image, entries, config)
