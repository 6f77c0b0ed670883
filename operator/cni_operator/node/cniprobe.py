"""The readiness probe: ADD, CHECK and DEL of the config a runtime uses, in a
scratch network namespace, exactly as the runtime would run them.

The plugins are exec'd from the node's bin dir as libcni does (`libcni.py`: the
chain in order for ADD and CHECK, reversed for DEL, prevResult chained), with the
CNI_* environment a runtime sets, in a fresh network namespace bind-mounted at
`<host root>/run/netns/cniwarden-probe-<node>-<time>-<random>` (a runtime's
directory, so the cni-server, which opens CNI_NETNS by path, finds it as it finds
a pod's). Every exec has a deadline; ADD and CHECK share `ADD_CHECK_SECONDS`, and
the DEL always runs, with its own `DEL_SECONDS`, whatever happened before; then the
namespace is unmounted and removed. Both budgets together stay below the shortest
lease grace (`pools.MIN_LEASE_GRACE_SECONDS`), so leak repair never takes the
probe's lease for a leak while it runs; a lease left by a probe that was killed
is never a live sandbox, so it is reclaimed once older than the grace. Namespaces
of interrupted probes of this node are removed (after a DEL) by the next probe.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_operator import libcni
from cni_operator.kube_time import now_iso
from cni_operator.node.atomic import sha256_bytes
from cni_operator.node.paths import HostPaths
from cni_operator.readiness import (
    ProbeResult,
    Readiness,
    config_key,
    probe_due,
    probe_id,
    stale_probe,
    with_probe,
)

log = logging.getLogger("cniwarden.probe")

IFNAME = "eth0"
SHIM_ENV = ("CNIWARDEN_SOCKET", "CNIWARDEN_DEL_QUEUE", "CNIWARDEN_TIMEOUT_MS")
EXEC_SECONDS = 15.0  # one plugin exec at most
ADD_CHECK_SECONDS = 25.0  # the ADD chain and the CHECK chain together
DEL_SECONDS = 15.0  # the DEL chain, a budget of its own
BUDGET_SECONDS = ADD_CHECK_SECONDS + DEL_SECONDS
NETNS_SECONDS = 5.0  # creating the scratch namespace

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def netns_dir(paths: HostPaths) -> Path:
    return paths.root / "run/netns"


def _errno_error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def create_netns(path: Path) -> None:
    """A new network namespace, bind-mounted at `path` (as `ip netns add` does). The
    unshare happens on a thread of its own that ends right after, so no thread of
    the agent is ever left in the scratch namespace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    failure: list[OSError] = []

    def make() -> None:
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise _errno_error("unshare(CLONE_NEWNET)")
            source = b"/proc/thread-self/ns/net"
            if _libc.mount(source, str(path).encode(), None, MS_BIND, None) != 0:
                raise _errno_error(f"bind mount onto {path}")
        except OSError as error:
            failure.append(error)

    worker = threading.Thread(target=make, name="cniwarden-probe-netns", daemon=True)
    worker.start()
    worker.join(NETNS_SECONDS)
    if worker.is_alive():
        failure.append(OSError(f"creating {path} took over {NETNS_SECONDS:g}s"))
    if failure:
        remove_netns(path)
        raise failure[0]


def remove_netns(path: Path) -> None:
    """Unmount (lazily: a plugin still holding it cannot block us) and unlink."""
    _libc.umount2(str(path).encode(), MNT_DETACH)  # EINVAL when not mounted: fine
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@dataclass
class Exec:
    """One plugin exec's outcome."""

    ok: bool
    result: dict[str, Any] | None = None
    detail: str = ""


def run_plugin(
    paths: HostPaths, kind: str, env: Mapping[str, str], stdin: bytes, timeout: float
) -> Exec:
    if timeout <= 0:
        return Exec(False, detail="no time left")
    full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
    for name in SHIM_ENV:  # where the shims find the server and their DEL queue
        if name in os.environ:
            full_env[name] = os.environ[name]
    try:
        done = subprocess.run(
            [str(paths.bin_dir / kind)],
            input=stdin,
            capture_output=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Exec(False, detail=f"no answer within {timeout:.0f}s")
    except OSError as error:
        return Exec(False, detail=f"cannot exec: {error.strerror}")
    if done.returncode != 0:
        try:
            err = json.loads(done.stdout)
            detail = f"code {err.get('code')}: {err.get('msg')}"
            if err.get("details"):
                detail += f" ({err.get('details')})"
        except (ValueError, AttributeError):
            tail = (done.stderr or done.stdout).decode(errors="replace")[-300:]
            detail = f"exit {done.returncode}: {tail}"
        return Exec(False, detail=detail)
    if env.get("CNI_COMMAND") != "ADD":
        return Exec(True)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return Exec(False, detail="ADD printed no JSON result")
    if not isinstance(result, dict):
        return Exec(False, detail="ADD printed no JSON object")
    return Exec(True, result)


@dataclass
class Outcome:
    ok: bool
    detail: str
    container_id: str
    seconds: float
    steps: list[str] = field(default_factory=list)


def _chain(
    paths: HostPaths,
    network: libcni.NetworkList,
    command: str,
    container_id: str,
    netns: str,
    *,
    prev: dict[str, Any] | None,
    deadline: float,
) -> tuple[Exec, str]:
    """One verb through the chain, libcni's way; (outcome, the failing plugin)."""
    env = libcni.environment(command, container_id, netns, IFNAME, str(paths.bin_dir))
    plugins = list(network.plugins)
    if command == "DEL":
        plugins.reverse()
    result = prev
    first_error: tuple[Exec, str] | None = None
    for plugin in plugins:
        kind = str(plugin["type"])
        remaining = min(EXEC_SECONDS, deadline - time.monotonic())
        if command == "ADD":
            stdin = libcni.plugin_stdin(network, plugin, result)
        elif command == "CHECK" or network.del_gets_prev_result:
            stdin = libcni.plugin_stdin(network, plugin, prev)
        else:
            stdin = libcni.plugin_stdin(network, plugin, None)
        done = run_plugin(paths, kind, env, stdin, remaining)
        if not done.ok:
            if command != "DEL":
                return done, kind
            # libcni stops at the first failing DEL; the probe goes on, to free
            # whatever the other plugins hold, and reports the first failure.
            first_error = first_error or (done, kind)
            continue
        if command == "ADD":
            result = done.result
    if first_error is not None:
        return first_error
    return Exec(True, result), ""


def probe(
    paths: HostPaths, node: str, filename: str, data: bytes, token: str | None = None
) -> Outcome:
    """ADD + CHECK + DEL of one config file in a scratch namespace; always DEL'd and
    the namespace always removed."""
    started = time.monotonic()
    container_id = probe_id(node, time.time(), token or secrets.token_hex(4))
    steps: list[str] = []

    def outcome(ok: bool, detail: str) -> Outcome:
        return Outcome(ok, detail, container_id, time.monotonic() - started, steps)

    try:
        network = libcni.load(data, filename)
    except libcni.ConfigError as error:
        return outcome(False, f"cannot load {filename}: {error}")
    sweep(paths, node, network)
    path = netns_dir(paths) / container_id
    try:
        create_netns(path)
    except OSError as error:
        return outcome(False, f"cannot create a scratch network namespace: {error}")
    failure = ""
    add: Exec | None = None
    try:
        deadline = time.monotonic() + ADD_CHECK_SECONDS
        add, kind = _chain(
            paths, network, "ADD", container_id, str(path), prev=None, deadline=deadline
        )
        steps.append("ADD" if add.ok else f"ADD failed ({kind})")
        if not add.ok:
            failure = f"ADD of {filename} failed in {kind}: {add.detail}"
        elif network.checks:
            check, kind = _chain(
                paths,
                network,
                "CHECK",
                container_id,
                str(path),
                prev=add.result,
                deadline=deadline,
            )
            steps.append("CHECK" if check.ok else f"CHECK failed ({kind})")
            if not check.ok:
                failure = f"CHECK of {filename} failed in {kind}: {check.detail}"
    finally:
        prev = add.result if add is not None and add.ok else None
        deadline = time.monotonic() + DEL_SECONDS
        try:
            delete, kind = _chain(
                paths, network, "DEL", container_id, str(path), prev=prev, deadline=deadline
            )
        except Exception as error:  # never skip the netns removal below
            delete, kind = Exec(False, detail=str(error)), "?"
        steps.append("DEL" if delete.ok else f"DEL failed ({kind})")
        if not delete.ok and not failure:
            failure = f"DEL of {filename} failed in {kind}: {delete.detail}"
        remove_netns(path)
    if failure:
        return outcome(False, failure)
    return outcome(True, f"ADD, {'CHECK, ' if network.checks else ''}DEL of {filename} ok")


def sweep(paths: HostPaths, node: str, network: libcni.NetworkList) -> list[str]:
    """Remove the namespaces of this node's interrupted probes, after a DEL of their
    attachment through the current config (its lease freed now rather than by the
    GC after the grace). Those of a probe still in time are left alone."""
    directory = netns_dir(paths)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    removed = []
    now = time.time()
    for name in names:
        if not stale_probe(name, node, now, BUDGET_SECONDS):
            continue
        path = directory / name
        deadline = time.monotonic() + DEL_SECONDS
        done, kind = _chain(paths, network, "DEL", name, str(path), prev=None, deadline=deadline)
        if not done.ok:
            log.warning("DEL of the interrupted probe %s failed in %s: %s", name, kind, done.detail)
        remove_netns(path)
        removed.append(name)
        log.info("removed the interrupted readiness probe %s", name)
    return removed


RETRY_SECONDS = 10.0  # a failed probe is run again this long after


class ReadinessProber:
    """Keeps the last probe and runs the next when `readiness.probe_due` says so."""

    def __init__(self, node: str, interval: float, retry: float = RETRY_SECONDS) -> None:
        self.node = node
        self.interval = interval
        self.retry = retry
        self.last: ProbeResult | None = None
        self.base_was_ready = False

    def judge(self, paths: HostPaths, files: list[tuple[str, bytes]], base: Readiness) -> Readiness:
        """The verdict for the configs in use (`files`: name and content), after a
        probe of them when one is due."""
        key = config_key([(name, sha256_bytes(data)) for name, data in files])
        due = probe_due(
            self.last,
            key,
            base,
            base_was_ready=self.base_was_ready,
            now=time.monotonic(),
            interval=self.interval,
            retry=self.retry,
        )
        if due:
            outcomes = [probe(paths, self.node, name, data) for name, data in files]
            ok = all(o.ok for o in outcomes)
            detail = "; ".join(o.detail for o in outcomes if o.ok is ok)
            self.last = ProbeResult(
                key,
                ok,
                time.monotonic(),
                sum(o.seconds for o in outcomes),
                detail,
                outcomes[-1].container_id if outcomes else "",
                now_iso(),
            )
            log.log(
                logging.INFO if ok else logging.WARNING,
                "readiness probe %s in %.2fs: %s",
                "passed" if ok else "failed",
                self.last.seconds,
                detail,
            )
        self.base_was_ready = base.ready
        return with_probe(base, self.last, key, self.interval > 0)

    def report(self) -> dict[str, Any] | None:
        return None if self.last is None else self.last.to_dict()
