"""Replaying the DEL queue: each queued DEL runs once its attachment is free, oldest first.

Two callers. The replay thread makes a pass at start and every `interval` seconds; a pass
never waits for anything: an entry whose attachment is busy (a request or another replay
holds it), or that was answered "try again" not long ago, is left for a later pass, and so
are that attachment's later entries, which keeps their order. And a request (ADD, CHECK)
first runs the queued DELs of its own attachment under that attachment's lock, so the
runtime's order holds without any request waiting for another attachment's DEL.

Each queued DEL of a pass runs under its own deadline (the request timeout): one that
hangs keeps its own attachment busy, never the other attachments' DELs, which the pass
replays meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from node_plugin.cni.request import LinkReaper
from node_plugin.server.attachments import Attachment, AttachmentLocks
from node_plugin.server.delqueue import DelQueue, RetryBook
from node_plugin.server.protocol import ProtocolError, Reply, Request, decode_request
from node_plugin.server.replies import error_code, who

log = logging.getLogger("cniwarden.cni_server")

Run = Callable[[Request], Reply]  # runs one request's handler, never raises


class Replayer:
    def __init__(
        self,
        queue: DelQueue,
        attachments: AttachmentLocks,
        book: RetryBook,
        run: Run,
        *,
        reaper: LinkReaper | None,
        request_timeout: float,
        stopping: threading.Event,
    ) -> None:
        self._queue = queue
        self._attachments = attachments
        self._book = book
        self._run = run
        self._reaper = reaper
        self._request_timeout = request_timeout
        self._stopping = stopping
        # Queue entries never change once written: their attachment is read once.
        self._keys_mutex = threading.Lock()
        self._entry_keys: dict[str, Attachment] = {}

    def replay_queue(self) -> int:
        """One pass over the queued DELs, oldest first; returns how many completed.

        Never waits: an entry whose attachment is busy (a request or another replay holds
        it), or that was answered "try again" not long ago, is left for a later pass.
        """
        done = 0
        busy: set[Attachment] = set()
        entries = self._queue.entries()
        names = {entry.name for entry in entries}
        self._book.forget_except(names)
        with self._keys_mutex:
            for name in [n for n in self._entry_keys if n not in names]:
                del self._entry_keys[name]
        for entry in entries:
            if self._stopping.is_set():
                break
            request = self._load_entry(entry)
            if request is None or request.attachment in busy:
                continue
            key = request.attachment
            assert key is not None  # _load_entry quarantines entries without one
            if not self._book.due(entry.name, time.monotonic()):
                busy.add(key)  # and the attachment's later entries wait behind it
                continue
            release = self._attachments.try_acquire(key)
            if release is None:
                busy.add(key)  # its later entries too: they stay in order
                continue
            completed = self._replay_bounded(entry, request, release)
            if completed is None:
                busy.add(key)  # still running: its later entries wait for the next pass
            else:
                done += completed
        return done

    def _replay_bounded(
        self, entry: Path, request: Request, release: Callable[[], None]
    ) -> int | None:
        """Runs one queued DEL on a thread of its own and waits for it until its deadline:
        1 or 0 as _replay_entry, None when it still runs (it goes on, holding its
        attachment until it ends; the pass goes on with the other attachments)."""
        result: list[int] = []

        def run() -> None:
            try:
                result.append(self._replay_entry(entry, request))
            except Exception:
                log.exception("replaying queued DEL %s failed", entry.name)
            finally:
                release()

        runner = threading.Thread(target=run, name=f"cni-replay-{entry.name}", daemon=True)
        runner.start()
        runner.join(self._request_timeout)
        if runner.is_alive():
            log.warning(
                "queued DEL %s for %s still runs after %gs: replaying the other "
                "attachments meanwhile",
                entry.name,
                who(request),
                self._request_timeout,
            )
            return None
        return result[0] if result else 0

    def replay_attachment(self, key: Attachment) -> None:
        """Runs the queued DELs of one attachment, oldest first; the caller holds its lock."""
        for entry in self._queue.entries():
            with self._keys_mutex:
                known = self._entry_keys.get(entry.name)
            if known is not None and known != key:
                continue
            request = self._load_entry(entry)
            if request is not None and request.attachment == key:
                self._replay_entry(entry, request)

    def run_forever(self, interval: float, first_pass_done: threading.Event) -> None:
        """The replay thread: a pass at once, then one every `interval` until stopped."""
        try:
            self._pass()
        finally:
            first_pass_done.set()
        while not self._stopping.wait(interval):
            self._pass()

    def _pass(self) -> None:
        try:
            if self._queue.pending():
                self.replay_queue()
            self._queue.remove_stale_temps()
        except OSError as e:
            log.error("DEL queue replay failed: %s", e)
        except Exception:  # the next pass may succeed; a dead replay thread never would
            log.exception("DEL queue replay failed")

    def _load_entry(self, entry: Path) -> Request | None:
        """The queued DEL in `entry`; None (and the entry quarantined) if it is not one,
        None if it is gone."""
        try:
            data = entry.read_bytes()
        except FileNotFoundError:
            return None
        why: str
        try:
            request = decode_request(data)
        except ProtocolError as e:
            log.error("DEL queue entry %s is unreadable: %s", entry.name, e)
            why = str(e)
        else:
            if request.command != "DEL":
                why = "not a DEL request"
            elif request.attachment is None:
                why = "a DEL without CNI_CONTAINERID"
            else:
                with self._keys_mutex:
                    self._entry_keys[entry.name] = request.attachment
                return request
        with self._keys_mutex, contextlib.suppress(FileNotFoundError):
            self._queue.quarantine(entry, why.encode())  # another thread may have
        return None

    def _replay_entry(self, entry: Path, request: Request) -> int:
        """Runs one queued DEL; the caller holds its attachment. 1 when it completed."""
        if not entry.exists():
            return 0  # replayed meanwhile (by whoever held the attachment before us)
        request = dataclasses.replace(
            request,
            reaper=self._reaper,
            deadline=time.monotonic() + self._request_timeout,
        )
        reply = self._run(request)
        code = error_code(reply)
        if code is None:
            self._queue.remove(entry)
            self._forget(entry.name)
            log.info("replayed queued DEL %s for %s", entry.name, who(request))
            return 1
        if self._book.policy.keeps(code):
            wait, failures = self._book.failed(entry.name, time.monotonic())
            log.warning(
                "queued DEL %s for %s answered %d (%d time(s)): retrying in %gs or before "
                "the next request for the attachment",
                entry.name,
                who(request),
                code,
                failures,
                wait,
            )
            return 0
        log.error("queued DEL %s failed for good: %r", entry.name, reply.stdout)
        self._queue.quarantine(entry, reply.stdout)
        self._forget(entry.name)
        return 0

    def _forget(self, name: str) -> None:
        with self._keys_mutex:
            self._entry_keys.pop(name, None)
        self._book.forget(name)
