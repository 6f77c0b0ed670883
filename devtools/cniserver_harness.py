"""`python -m devtools.cniserver_harness`: the cni-server with test seams, for tests and benches.

The shipped `cniwarden cni-server` runs node_plugin and nothing else. Tests and benches
need more, and get it here, outside the installed package (devtools is not in the wheel):

- `--handler MODULE:FACTORY` runs the Handler that FACTORY returns instead of node_plugin
  (devtools.fake_handlers: echo, mirror, recording), to measure or test the transport alone;
- `--hold-tombstones`: DEL still buries veth pairs, but nothing ever unregisters them (the
  tests look at tombstones, or kill the server while some exist);
- `--events FILE`: one JSON line per request entering and leaving the handler (what is in
  flight, as the server sees it), and one per pause below;
- `--pause-at MODULE:ATTR.PATH:before|after:N` (repeatable): the N-th call of that
  function (counted over all threads) stops before or after running, for ever, once it
  has written a "paused" event: a test then kills the server at exactly that point of a
  request (fault injection). Other requests go on.

Every other option is the product's own (node_plugin.server.cli), with the same meaning.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node_plugin.server import cli
from node_plugin.server.dispatch import node_plugin_handler
from node_plugin.server.protocol import Reply, Request
from node_plugin.server.reaper import Reaper
from node_plugin.server.server import CniServer, Handler


class HoldingReaper(Reaper):
    """A reaper that unregisters nothing: DEL buries, the tombstones stay."""

    def schedule(self) -> None:
        pass

    def reap_here(self) -> bool:
        return False


def load_handler(spec: str) -> Handler:
    """`module:factory` -> the Handler the factory returns."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"handler {spec!r} is not of the form module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    handler: Handler = factory()
    return handler


class Events:
    """Appends JSON lines to a file, one write per line (readers never see half a line)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        line = json.dumps({"time": time.time(), **fields}) + "\n"
        with self._lock, self._path.open("a") as out:
            out.write(line)
            out.flush()


def recording(handler: Handler, events: Events) -> Handler:
    """`handler`, with a "start" and an "end" event around each request."""

    def handle(request: Request) -> Reply:
        who = {"command": request.command, "container": request.env.get("CNI_CONTAINERID", "")}
        events.write(event="start", **who)
        try:
            reply = handler(request)
        except BaseException:
            events.write(event="end", exit_code=-1, **who)
            raise
        events.write(event="end", exit_code=reply.exit_code, **who)
        return reply

    return handle


def install_pause(spec: str, events: Events | None) -> None:
    """Patches the function named by `spec` (see the module docstring) to stop for ever
    on its N-th call, before or after running."""
    try:
        module_name, qualname, when, nth_text = spec.split(":")
        nth = int(nth_text)
    except ValueError:
        raise SystemExit(f"--pause-at {spec!r}: want MODULE:ATTR.PATH:before|after:N") from None
    if when not in ("before", "after") or nth < 1:
        raise SystemExit(f"--pause-at {spec!r}: want before|after and N >= 1")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original: Callable[..., Any] = getattr(owner, name)
    calls = [0]
    lock = threading.Lock()

    def reached() -> bool:
        with lock:
            calls[0] += 1
            return calls[0] == nth

    def pause() -> None:
        if events is not None:
            events.write(event="paused", point=spec, thread=threading.current_thread().name)
        threading.Event().wait()  # until the test kills the process

    @functools.wraps(original)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if when == "before" and reached():
            pause()
        result = original(*args, **kwargs)
        if when == "after" and reached():
            pause()
        return result

    setattr(owner, name, paused)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.build_parser(prog="python -m devtools.cniserver_harness")
    parser.add_argument("--handler", help="MODULE:FACTORY of the handler (default: node_plugin)")
    parser.add_argument("--hold-tombstones", action="store_true")
    parser.add_argument("--events", type=Path, help="JSON lines: requests in and out, pauses")
    parser.add_argument("--pause-at", action="append", default=[], metavar="SPEC")
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    config = cli.config_from(args)
    events = Events(args.events) if args.events else None

    def build() -> CniServer:
        handler = load_handler(args.handler) if args.handler else node_plugin_handler()
        for spec in args.pause_at:  # after the warm-up imported what they patch
            install_pause(spec, events)
        if events is not None:
            handler = recording(handler, events)
        reaper = HoldingReaper(interval=config.reap_interval) if args.hold_tombstones else None
        return CniServer(handler, config, reaper)

    return cli.serve(build)


if __name__ == "__main__":
    sys.exit(main())
