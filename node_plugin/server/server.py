"""The resident CNI server behind the static shim.

One process per node keeps the plugin code imported and its netlink sockets warm, so a
pod's ADD costs the plugin's actual work instead of an interpreter start plus imports.

Shape: `workers` + 1 threads each accept a connection, read the request (the whole of it
before one deadline), and answer. At most `workers` requests do real work at once
(node_plugin.server.slots); a request that finds them all busy waits in memory, in
arrival order, for the first one to free up, and the spare thread keeps accepting, so a
connection is always read and STATUS and VERSION are always answered at once, whatever
the busy workers wait for. Every step has a deadline: reading the request, the wait for
a slot and for the attachment, the work itself. A watchdog (node_plugin.server.watchdog)
answers "try again" (11) for a request past its deadline and starts a new worker in
place of the one still running it. Requests for one attachment (container id, ifname)
run one after another, in arrival order (node_plugin.server.attachments). DEL answers
once the veth pair is out of service and leaves its unregistration (10-30 ms of kernel
time) to the reaper thread. No exception ends a thread.

DELs the shim could not deliver are in the DEL queue (node_plugin.server.delqueue). A
replay thread (node_plugin.server.replay) runs it at start (serving begins when that first
pass is done, or after `start_replay_wait`) and every few seconds, each DEL under its own
deadline; an ADD or CHECK first replays the queued DELs of its own attachment. Nothing a
delegated IPAM plugin does can hold a worker for ever either: it is killed before the
request's deadline (node_plugin.ipam.delegate).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from node_plugin.cni.errors import CniError
from node_plugin.kernel import netns
from node_plugin.server.attachments import AttachmentBusyError, AttachmentLocks
from node_plugin.server.config import DEFAULT_SOCKET, ServerConfig
from node_plugin.server.connection import ConnectionReader, ReadTimeoutError, send_reply
from node_plugin.server.delqueue import DelQueue, RetryBook, RetryPolicy
from node_plugin.server.flights import Flight, Flights, Worker
from node_plugin.server.listener import Listener, ServerError
from node_plugin.server.metrics import ServerMetrics
from node_plugin.server.peercred import peer_credentials
from node_plugin.server.protocol import ProtocolError, Reply, Request, read_request
from node_plugin.server.reaper import Reaper
from node_plugin.server.replay import Replayer
from node_plugin.server.replies import (
    CNI_INTERNAL,
    CNI_IO_FAILURE,
    CNI_TRY_AGAIN,
    error_reply,
    who,
)
from node_plugin.server.slots import Slots
from node_plugin.server.stranded import exit_stranded
from node_plugin.server.watchdog import watch

__all__ = ["DEFAULT_SOCKET", "CniServer", "Handler", "ServerConfig", "ServerError"]

log = logging.getLogger("cniwarden.cni_server")

Handler = Callable[[Request], Reply]

# Verbs answered by whichever thread read them, without a slot: they are cheap and must
# be answered even when every worker is busy (a node's readiness depends on STATUS).
LIGHT_COMMANDS = frozenset({"STATUS", "VERSION", ""})
SPARE_THREADS = 1  # accepting threads beyond `workers`


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
        self._slots: Slots[Flight] = Slots(config.workers)
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
        self._threads_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._worker_numbers = itertools.count()
        self._retired_running = 0  # retired workers still running their request
        self._helpers: list[threading.Thread] = []
        self.metrics = ServerMetrics()
        self.metrics.bind(
            lambda: len(self.in_flight()),
            self._queue.depth,
            self.reaper.backlog,
        )

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
        for _ in range(self._config.workers + SPARE_THREADS):
            self._start_worker()
        self._start_helper(
            lambda: watch(
                self._flights,
                self._config.request_timeout,
                self._stopping,
                self._send,
                self._replace_worker,
            ),
            "cni-watchdog",
        )
        log.info("serving CNI requests on %s", self._config.socket_path)

    def _start_helper(self, target: Callable[[], None], name: str) -> None:
        helper = threading.Thread(target=target, name=name, daemon=True)
        helper.start()
        self._helpers.append(helper)

    def _start_worker(self) -> None:
        worker = Worker(f"cni-worker-{next(self._worker_numbers)}")
        thread = threading.Thread(
            target=self._worker_loop, args=(worker,), name=worker.name, daemon=True
        )
        with self._threads_lock:
            self._workers = [t for t in self._workers if t.is_alive()]  # retired, ended
            self._workers.append(thread)
        thread.start()

    def in_flight(self) -> list[tuple[str, str]]:
        """(verb, attachment) of each connection being served, from its accept on;
        ("(reading)", "-") while its request is being read. Arrival order not kept."""
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
        for flight in self._slots.drain():  # accepted, never started: the shim retries
            self._answer_unstarted(flight, "the cni-server is stopping")
        deadline = time.monotonic() + grace
        with self._threads_lock:
            threads = list(self._workers)
        for thread in threads + self._helpers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        abandoned = sum(thread.is_alive() for thread in threads)
        running = self.in_flight()
        self.reaper.stop(timeout=max(1.0, deadline - time.monotonic()))
        self.metrics.close()
        if self._listener is not None:
            self._listener.close()
        if abandoned:
            log.warning(
                "stopped with %d request(s) still running: %s",
                abandoned,
                ", ".join(f"{verb} {who}" for verb, who in running) or "-",
            )
        log.info("stopped")

    # ---- workers ---------------------------------------------------------------------

    def _worker_loop(self, me: Worker) -> None:
        """Accept, read, run, answer; then run what waits for the slot, or accept again.
        Ends at stop, or after its request when the watchdog gave its place away."""
        flight = self._slots.take_waiting()  # a replacement first serves who waited
        while True:
            if flight is not None:
                self._serve(me, flight)
                if me.retired:
                    return
                flight = self._slots.next_or_release()
                continue
            if self._stopping.is_set():
                return
            try:
                flight = self._accept(me)
            except BaseException:  # one connection must never cost the server a worker
                log.exception("serving a connection failed")
                flight = None

    def _accept(self, me: Worker) -> Flight | None:
        """One connection: a request that holds a slot now (the caller runs it), or None
        (answered here, waiting for a slot, or dropped)."""
        assert self._listener is not None
        try:
            conn, _ = self._listener.socket.accept()
        except OSError as e:
            if not self._stopping.is_set():
                log.error("accept failed: %s", e)
                time.sleep(0.1)
            return None
        flight = Flight(conn, deadline=time.monotonic() + self._config.request_timeout)
        self._flights.add(flight)
        keep = False
        try:
            if not self._receive(flight):
                return None
            request = flight.request
            assert request is not None
            if request.command in LIGHT_COMMANDS:
                self._serve(me, flight)  # closes it
                keep = True
                return None
            flight.heavy = True
            keep = True
            return flight if self._slots.take_or_wait(flight) else None
        except OSError as e:
            log.info("client went away: %s", e)
            return None
        finally:
            if not keep:
                self._flights.remove(flight)
                flight.close()

    def _receive(self, flight: Flight) -> bool:
        """Checks the peer and reads the request into `flight`; False (answered or not)
        when there is nothing to run."""
        conn = flight.conn
        timeout = self._config.read_timeout
        peer = peer_credentials(conn)
        if peer.uid not in self._allowed:
            log.warning("refused a request from pid %d uid %d", peer.pid, peer.uid)
            msg = f"cni-server refuses requests from uid {peer.uid}"
            send_reply(conn, error_reply(None, CNI_IO_FAILURE, msg), timeout, drain=True)
            return False
        reader = ConnectionReader(conn, deadline=time.monotonic() + timeout)
        try:
            request = read_request(reader.read_exact)
        except ReadTimeoutError as e:
            # A shim sends its request at once: a client this slow is dropped unanswered.
            reader.close_fd()
            log.warning("dropped pid %d: %s within %gs", peer.pid, e, timeout)
            return False
        except ProtocolError as e:
            reader.close_fd()
            log.warning("bad request from pid %d: %s", peer.pid, e)
            reply = error_reply(None, CNI_IO_FAILURE, f"cniwarden protocol error: {e}")
            send_reply(conn, reply, timeout, drain=True)
            return False
        except BaseException:
            reader.close_fd()
            raise
        flight.netns_fd = reader.take_fd()
        flight.request = dataclasses.replace(
            request, netns_fd=flight.netns_fd, reaper=self.reaper, deadline=flight.deadline
        )
        return True

    def _serve(self, me: Worker, flight: Flight) -> None:
        """Runs the flight's request on this thread and answers it; always closes it."""
        try:
            request = flight.request
            assert request is not None
            if not flight.start(me):
                return  # answered "try again" while it waited for a slot: never ran
            reply = self._execute(request)
            if flight.finish():
                self._retired_done()
            if not flight.answer_once(reply, self._send):
                log.warning(
                    "%s %s finished after its deadline (exit %d)",
                    request.command,
                    who(request),
                    reply.exit_code,
                )
        except BaseException:  # the worker lives on
            log.exception("serving a request failed")
        finally:
            self._flights.remove(flight)
            flight.close()

    def _replace_worker(self, flight: Flight) -> None:
        """The watchdog's: a worker past its request's deadline is retired and another
        takes its place (and its slot); capped, so a flood of requests that never end
        costs a bounded number of threads."""
        if self._stopping.is_set():
            return
        with self._threads_lock:
            if self._retired_running >= self._max_retired():
                return
            worker = flight.abandon()
            if worker is None:
                return
            worker.retired = True
            self._retired_running += 1
        if flight.heavy:
            self._slots.give_up()
        log.warning("%s is retired after its request's deadline; starting another", worker.name)
        self._start_worker()

    def _retired_done(self) -> None:
        with self._threads_lock:
            self._retired_running -= 1

    def _max_retired(self) -> int:
        return 4 * (self._config.workers + SPARE_THREADS)

    def _answer_unstarted(self, flight: Flight, why: str) -> None:
        request = flight.request
        assert request is not None
        flight.answer_once(error_reply(request, CNI_TRY_AGAIN, f"{why}: retry"), self._send)
        self._flights.remove(flight)
        flight.close()

    def _send(self, conn: socket.socket, reply: Reply) -> None:
        send_reply(conn, reply, self._config.read_timeout)

    # ---- running a request -----------------------------------------------------------

    def _execute(self, request: Request) -> Reply:
        start = time.perf_counter()
        key = request.attachment
        try:
            with self._attachments.hold(key, request.deadline):
                if key is not None and request.command != "DEL" and self._queue.pending():
                    # A queued DEL of this attachment predates this request: keep the
                    # runtime's order. (A DEL does what the queued one would.)
                    self._replayer.replay_attachment(key)
                reply = self._in_callers_netns(request)
        except AttachmentBusyError as e:
            reply = error_reply(request, CNI_TRY_AGAIN, f"{e}: retry")
        self.metrics.observe(
            request.plugin,
            request.command,
            reply.exit_code,
            reply.stdout,
            time.perf_counter() - start,
        )
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
            reply = self._handler(request)
        except (Exception, SystemExit) as e:  # SystemExit too: it would end the worker
            log.exception("%s %s failed", request.command, who(request))
            return error_reply(request, CNI_INTERNAL, f"internal error in cni-server: {e}")
        if not 0 <= reply.exit_code <= 255:  # the wire (and a process) cannot carry it
            msg = f"internal error in cni-server: the handler exited {reply.exit_code}"
            return error_reply(request, CNI_INTERNAL, msg)
        return reply
