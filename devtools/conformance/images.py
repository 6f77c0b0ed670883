"""The test images e2e.test runs, built here (nothing is pulled) as OCI tarballs.

agnhost: the `agnhost` binary (`make conformance` builds it at the tag
`e2e.test --list-images` names) plus the tools upstream's Alpine-based image
carries and the tests exec in it: bash, curl, dig/nslookup (DNS tests), an
`nc` with `-u` (netcat-openbsd; node-to-pod UDP checks) and busybox for the rest.
Dynamic binaries come with the libraries `ldd` names. `/bin/sh` is bash:
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

# Host binary -> where it goes in the image (Debian packages: scripts/install-debian-packages.sh).
AGNHOST_TOOLS = {
    "/usr/bin/bash": "bin/bash",
    "/usr/bin/curl": "usr/bin/curl",
    "/usr/bin/dig": "usr/bin/dig",
    "/usr/bin/nslookup": "usr/bin/nslookup",
    "/usr/bin/host": "usr/bin/host",
    "/usr/bin/nc.openbsd": "usr/bin/nc",
}
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


def agnhost_entries(agnhost: Path) -> list[Entry]:
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


def build_agnhost(out: Path, agnhost: Path, image: str) -> Path:
    config: dict[str, object] = {
        "Entrypoint": ["/agnhost"],
        "Cmd": ["pause"],
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
    }
    return write_oci_tarball(out, image, agnhost_entries(agnhost), config)
