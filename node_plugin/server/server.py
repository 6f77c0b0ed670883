"""The resident CNI server behind the static shim.

One process per node keeps the plugin code imported and its netlink sockets warm, so a
pod's ADD costs the plugin's actual work instead of an interpreter start plus imports.

Shape: a fixed set of worker threads each accept a connection, read the request (with a
time limit), run it and answer; that bounds concurrency, and further connections wait in
the listen backlog. A watchdog (node_plugin.server.watchdog) answers "try again" (11) for
a request past its deadline while its worker finishes the work. Requests for one
attachment (container id, ifname) run one after another, in arrival order
(node_plugin.server.attachments). DEL answers once the veth pair is out of service and
leaves its unregistration (10-30 ms of kernel time) to the reaper thread.

DELs the shim could not deliver are in the DEL queue (node_plugin.server.delqueue). A
replay thread (node_plugin.server.replay) runs it at start (serving begins when that first
pass is done, or after `start_replay_wait`) and every few seconds; an ADD or CHECK first
replays the queued DELs of its own attachment. Nothing a delegated IPAM plugin does can
hold a worker for ever either: it is killed before the request's deadline
(node_plugin.ipam.delegate).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from node_plugin.cni.errors import CniError
from node_plugin.kernel import netns
from node_plugin.server.attachments import AttachmentLocks
from node_plugin.server.config import DEFAULT_SOCKET, ServerConfig
from node_plugin.server.connection import ConnectionReader, ReadTimeoutError, send_reply
from node_plugin.server.delqueue import DelQueue, RetryBook, RetryPolicy
from node_plugin.server.flights import Flight, Flights
from node_plugin.server.listener import Listener, ServerError
from node_plugin.server.peercred import peer_credentials
from node_plugin.server.protocol import ProtocolError, Reply, Request, read_request
from node_plugin.server.reaper import Reaper
from node_plugin.server.replay import Replayer
from node_plugin.server.replies import CNI_INTERNAL, CNI_IO_FAILURE, error_reply, who
from node_plugin.server.stranded import exit_stranded
from node_plugin.server.watchdog import watch

__all__ = ["DEFAULT_SOCKET", "CniServer", "Handler", "ServerConfig", "ServerError"]

log = logging.getLogger("cniwarden.cni_server")

Handler = Callable[[Request], Reply]


class CniServer:
    def __init__(
        self, handler: Handler, config: ServerConfig, reaper: Reaper | None = None
    ) -> None:
        """`reaper`: the one DEL hands its tombstones to (default: a Reaper sweeping every
        `config.reap_interval`); the test harness injects one that never unregisters."""
        self._handler = handler
        self._config = config
        self._queue = DelQueue(config.del_queue)
        self._allowed = config.allowed_uids or frozenset({os.geteuid()})
        self._attachments = AttachmentLocks()
        self.reaper = reaper if reaper is not None else Reaper(interval=config.reap_interval)
        self._first_replay = threading.Event()
        self._stopping = threading.Event()
        self._flights = Flights()
        self._replayer = Replayer(
            self._queue,
            self._attachments,
            RetryBook(RetryPolicy(config.replay_interval, config.replay_backoff_max)),
            self._call_handler,
            reaper=self.reaper,
            request_timeout=config.request_timeout,
            stopping=self._stopping,
        )
        self._listener: Listener | None = None
        self._workers: list[threading.Thread] = []
        self._helpers: list[threading.Thread] = []

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Binds the socket, replays queued DELs (for a bounded time), then serves."""
        self._listener = Listener(self._config.socket_path)
        self._queue.remove_stale_temps()
        self.reaper.start()  # replayed DELs hand it their tombstones
        self._start_helper(
            lambda: self._replayer.run_forever(self._config.replay_interval, self._first_replay),
            "cni-replay",
        )
        wait = self._config.start_replay_wait
        if not self._first_replay.wait(wait):
            log.warning(
                "the DEL queue's first replay still runs after %gs: serving meanwhile "
                "(requests for the attachment being replayed wait for it)",
                wait,
            )
        # Tombstones of a server that was killed, and those of the replayed DELs: gone
        # before the first request is served.
        if self.reaper.sweep():
            log.info("unregistered tombstones at start (a killed server's, the replayed DELs')")
        # Each worker accepts for itself: no hand-off between threads on the hot path
        # (measured: 46 us per no-op request against 435 us with an acceptor and a pool).
        for n in range(self._config.workers):
            worker = threading.Thread(target=self._worker_loop, name=f"cni-worker-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._start_helper(
            lambda: watch(self._flights, self._config.request_timeout, self._stopping, self._send),
            "cni-watchdog",
        )
        log.info("serving CNI requests on %s", self._config.socket_path)

    def _start_helper(self, target: Callable[[], None], name: str) -> None:
        helper = threading.Thread(target=target, name=name, daemon=True)
        helper.start()
        self._helpers.append(helper)

    def in_flight(self) -> list[tuple[str, str]]:
        """(verb, attachment) of each request being served, arrival order not kept."""
        return self._flights.describe()

    def replay_queue(self) -> int:
        """One pass over the queued DELs (see Replayer.replay_queue)."""
        return self._replayer.replay_queue()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until stop() ran; True if it did."""
        return self._stopping.wait(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets in-flight requests finish (up to `grace`), cleans up."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            self._listener.stop_accepting()
            self._listener.remove_file()
        deadline = time.monotonic() + grace
        for thread in self._workers + self._helpers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        abandoned = sum(thread.is_alive() for thread in self._workers)
        running = self.in_flight()
        self.reaper.stop(timeout=max(1.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        if abandoned:
            log.warning(
                "stopped with %d request(s) still running: %s",
                abandoned,
                ", ".join(f"{verb} {who}" for verb, who in running) or "-",
            )
        log.info("stopped")

    # ---- connections -----------------------------------------------------------------

    def _worker_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener.socket
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError as e:
                if self._stopping.is_set():
                    return
                log.error("accept failed: %s", e)
                time.sleep(0.1)
                continue
            try:
                self._converse(conn)
            except OSError as e:
                log.info("client went away: %s", e)
            except BaseException:  # one request must never cost the server a worker
                log.exception("serving a connection failed")
            finally:
                conn.close()

    def _send(self, conn: socket.socket, reply: Reply) -> None:
        send_reply(conn, reply, self._config.read_timeout)

    def _converse(self, conn: socket.socket) -> None:
        # In flight from accept: the request's deadline runs from here, and the whole
        # request must arrive within read_timeout (a timeout per recv let a client that
        # sends a byte every few seconds hold the worker for ever).
        accepted = time.monotonic()
        flight = Flight(conn, deadline=accepted + self._config.request_timeout)
        self._flights.add(flight)
        try:
            self._serve(flight, read_deadline=accepted + self._config.read_timeout)
        finally:
            self._flights.remove(flight)

    def _serve(self, flight: Flight, read_deadline: float) -> None:
        conn = flight.conn
        peer = peer_credentials(conn)
        if peer.uid not in self._allowed:
            log.warning("refused a request from pid %d uid %d", peer.pid, peer.uid)
            msg = f"cni-server refuses requests from uid {peer.uid}"
            reply = error_reply(None, CNI_IO_FAILURE, msg)
            send_reply(conn, reply, self._config.read_timeout, drain=True)
            return
        reader = ConnectionReader(conn, read_deadline)
        try:
            request = read_request(reader.read_exact)
        except ReadTimeoutError as e:
            # A shim sends its request at once: a client this slow is dropped unanswered.
            reader.close_fd()
            log.warning("dropped pid %d: %s within %gs", peer.pid, e, self._config.read_timeout)
            return
        except ProtocolError as e:
            reader.close_fd()
            log.warning("bad request from pid %d: %s", peer.pid, e)
            reply = error_reply(None, CNI_IO_FAILURE, f"cniwarden protocol error: {e}")
            send_reply(conn, reply, self._config.read_timeout, drain=True)
            return
        except OSError:
            reader.close_fd()
            raise
        flight.netns_fd = reader.take_fd()
        request = dataclasses.replace(
            request, netns_fd=flight.netns_fd, reaper=self.reaper, deadline=flight.deadline
        )
        flight.request = request
        try:
            reply = self._execute(request)
        finally:
            flight.close_fd()
        if not flight.answer_once(reply, self._send):
            log.warning(
                "%s %s finished after its deadline (exit %d)",
                request.command,
                who(request),
                reply.exit_code,
            )

    # ---- running a request -----------------------------------------------------------

    def _execute(self, request: Request) -> Reply:
        start = time.perf_counter()
        key = request.attachment
        with self._attachments.hold(key):
            if key is not None and request.command != "DEL" and self._queue.pending():
                # A queued DEL of this attachment predates this request: keep the
                # runtime's order. (A DEL does what the queued one would.)
                self._replayer.replay_attachment(key)
            reply = self._in_callers_netns(request)
        log.info(
            "%s %s %s -> %d in %.1f ms",
            request.plugin,
            request.command,
            who(request),
            reply.exit_code,
            (time.perf_counter() - start) * 1000,
        )
        return reply

    def _in_callers_netns(self, request: Request) -> Reply:
        """Runs the handler in the namespace the shim sent, as an exec'd plugin would run.

        No namespace (a queued DEL, a caller that sent none): the server's own, which is
        the runtime's on a node. A worker that cannot come back ends the process.
        """
        if request.netns_fd is None:
            return self._call_handler(request)
        inside = False
        try:
            with netns.entered(request.netns_fd):
                inside = True
                return self._call_handler(request)
        except (CniError, OSError) as e:
            if inside:
                raise
            msg = f"cannot enter the caller's network namespace: {e}"
            return error_reply(request, CNI_IO_FAILURE, msg)
        except netns.NetnsRestoreError:
            exit_stranded("worker")

    def _call_handler(self, request: Request) -> Reply:
        try:
            return self._handler(request)
        except (Exception, SystemExit) as e:  # SystemExit too: it would end the worker
            log.exception("%s %s failed", request.command, who(request))
            return error_reply(request, CNI_INTERNAL, f"internal error in cni-server: {e}")
