"""The server's reaper: unregisters the veth pairs DEL buried, after DEL answered.

DEL (node_plugin.bridge.plugin with a reaper) leaves each pair as a tombstone, down, detached
and marked (node_plugin.kernel.tombstones), in the namespace the request ran in, and calls
`schedule()` from there. One thread here keeps a descriptor of each such namespace and
unregisters all of a namespace's tombstones with one request, so pairs buried while it
waits for the kernel share the next RCU wait. It also sweeps the server's own namespace
at start (tombstones of a server that was killed) and every `interval` seconds.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from node_plugin.cni.errors import CniError
from node_plugin.kernel import netns, tombstones
from node_plugin.kernel.rtnl import Rtnl
from node_plugin.server.stranded import exit_stranded

log = logging.getLogger("cniwarden.cni_server")


class Reaper:
    def __init__(self, *, interval: float = 5.0) -> None:
        self._interval = interval
        self._cond = threading.Condition()
        self._pending: dict[tuple[int, int], int] = {}  # namespace identity -> its fd
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    def schedule(self) -> None:
        """Called by DEL, in the namespace where it left tombstones."""
        try:
            fd = os.open(netns.THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:  # DEL succeeded; the sweep or a GC deletes the tombstone
            log.error("cannot schedule reaping: %s", exc)
            return
        ident = netns.identity(fd)
        with self._cond:
            if ident in self._pending or self._stopping:
                os.close(fd)
                return
            self._pending[ident] = fd
            self._cond.notify_all()

    def backlog(self) -> int:
        """Namespaces waiting to be swept (the metrics' reaper backlog)."""
        with self._cond:
            return len(self._pending)

    def reap_here(self) -> bool:
        """Unregisters the tombstones of the calling thread's namespace now (blocking);
        False when there were none."""
        with Rtnl() as sock:
            return tombstones.reap(sock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cni-reaper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Reaps what is pending (up to `timeout`), then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            for fd in self._pending.values():
                os.close(fd)
            self._pending.clear()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is pending or being reaped (tests, bench)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(self._interval)
                batch, self._pending = self._pending, {}
                stopping = self._stopping
                self._busy = True
            try:
                if not batch and not stopping:
                    self.sweep()
                for fd in batch.values():
                    try:
                        self._reap_in(fd)
                    except Exception:  # the sweep and GC catch what is left; the thread lives
                        log.exception("unregistering tombstones failed")
            except Exception:
                log.exception("sweeping tombstones failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if stopping:
                return

    def _reap_in(self, fd: int) -> None:
        started = time.perf_counter()
        try:
            with netns.entered(fd), Rtnl() as sock:
                tombstones.reap(sock)
        except netns.NetnsRestoreError:
            exit_stranded("reaper")
        except (CniError, OSError) as exc:
            # The sweep of the server's namespace and GC catch what is left.
            log.error("unregistering tombstones failed: %s", exc)
        finally:
            os.close(fd)
        log.debug(
            "reaped a namespace's tombstones in %.1f ms", (time.perf_counter() - started) * 1e3
        )

    def sweep(self) -> bool:
        """reap_here() that logs instead of raising (the server starts regardless)."""
        try:
            return self.reap_here()
        except (CniError, OSError) as exc:
            log.error("sweeping tombstones failed: %s", exc)
            return False
        except Exception:
            log.exception("sweeping tombstones failed")
            return False
