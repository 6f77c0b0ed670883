"""The CNI plugin the runtime differential test installs: it records every call
and answers as a conformant plugin would, so the test sees which network a real
runtime attached a real pod sandbox to without touching any host network.

- VERSION lists the versions in `.<name>.versions` next to the binary (JSON
  array; all spec versions when absent), so one source serves as a current
  plugin, an old one, and (named after an IPAM type) an IPAM delegate.
- ADD/CHECK/DEL/STATUS/GC refuse a cniVersion their VERSION does not list
  (code 1), delegate to `ipam.type` through CNI_PATH as the reference plugins do
  (a missing delegate fails the call), and ADD returns an address on CNI_IFNAME
  in the result format of the config's version.
- Every call is appended to `calls.jsonl` in the bin dir's parent (not the bin
  dir: CRI-O watches that and would resync on every write).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

SPEC_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

SOURCE = r"""#!/usr/bin/env python3
import fcntl, json, os, subprocess, sys

ALL = %(versions)s
me = os.path.basename(sys.argv[0])
here = os.path.dirname(os.path.abspath(sys.argv[0]))
try:
    with open(os.path.join(here, "." + me + ".versions")) as f:
        supported = json.load(f)
except FileNotFoundError:
    supported = ALL
command = os.environ.get("CNI_COMMAND", "")
raw = sys.stdin.buffer.read()
try:
    conf = json.loads(raw) if raw.strip() else {}
except ValueError:
    conf = {}
if not isinstance(conf, dict):
    conf = {}
asked = conf.get("cniVersion") or "0.1.0"
ifname = os.environ.get("CNI_IFNAME", "")


def record(outcome):
    line = json.dumps({
        "command": command, "plugin": me, "network": conf.get("name"),
        "cniVersion": conf.get("cniVersion"), "ifname": ifname,
        "container": os.environ.get("CNI_CONTAINERID", ""), "outcome": outcome,
    })
    with open(os.path.join(here, "..", "calls.jsonl"), "a") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        log.write(line + "\n")


def fail(code, msg):
    record("error %%d: %%s" %% (code, msg))
    print(json.dumps({"cniVersion": "1.0.0", "code": code, "msg": msg}))
    sys.exit(1)


if command == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": supported}))
    sys.exit(0)
if asked not in supported:
    fail(1, "incompatible CNI versions: config is %%r, plugin supports %%s" %% (asked, supported))
ipam = conf.get("ipam") if isinstance(conf.get("ipam"), dict) else {}
delegate = ipam.get("type") if ipam.get("type") != me else None
ips = None
if delegate and command in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
    path = next((os.path.join(d, delegate) for d in os.environ.get("CNI_PATH", "").split(":")
                 if d and os.path.isfile(os.path.join(d, delegate))), None)
    if path is None:
        fail(999, "failed to find plugin %%r in path %%s" %% (delegate, os.environ.get("CNI_PATH")))
    done = subprocess.run([path], input=raw, capture_output=True, timeout=20)
    if done.returncode != 0:
        sys.stdout.buffer.write(done.stdout)
        record("delegate failed")
        sys.exit(done.returncode)
    if command == "ADD":
        ips = json.loads(done.stdout).get("ips")
record("ok")
if command != "ADD":
    sys.exit(0)
address = "127.0.0.1/8" if ifname == "lo" else "10.88.0.2/16"
v3 = asked.startswith("0.3.")
ip = {"address": address}
if v3:
    ip["version"] = "4"
if asked in ("0.1.0", "0.2.0"):
    print(json.dumps({"cniVersion": asked, "ip4": {"ip": address}}))
elif me == ipam.get("type"):
    print(json.dumps({"cniVersion": asked, "ips": [ip]}))
else:
    ip["interface"] = 0
    print(json.dumps({
        "cniVersion": asked,
        "interfaces": [{"name": ifname, "sandbox": os.environ.get("CNI_NETNS", "")}],
        "ips": ips or [ip],
    }))
"""


def install(bin_dir: Path, plugins: dict[str, list[str] | None]) -> None:
    """Install the recorder under each name; a list pins that name's VERSION answer."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    text = SOURCE % {"versions": repr(SPEC_VERSIONS)}
    for name, versions in plugins.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        if versions is not None:
            (bin_dir / f".{name}.versions").write_text(json.dumps(versions))


def calls(work: Path) -> list[dict[str, object]]:
    """Every recorded call so far (the bin dir's parent is `work`)."""
    log = work / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
