"""node_plugin.api.handle in the bench's own process: where a warm ADD and DEL spend time."""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import time
from typing import Any

from bench.fastpath.impls import REFERENCE_DIR, with_prev


def profile_handler(
    config: dict[str, Any], sandbox: str, n: int = 30
) -> tuple[dict[str, float], str]:
    """node_plugin.api.handle in this process, with a reaper as in the server: its own time
    per verb, where it goes, and how long the reaper then waits for the kernel."""
    from node_plugin import api  # noqa: PLC0415 (not needed unless profiling)
    from node_plugin.kernel import rtnl  # noqa: PLC0415
    from node_plugin.server.reaper import Reaper  # noqa: PLC0415

    reaper = Reaper()
    reaper.start()

    env = {
        "CNI_CONTAINERID": "prof",
        "CNI_NETNS": f"/run/netns/{sandbox}",
        "CNI_IFNAME": "prof0",
        "CNI_PATH": str(REFERENCE_DIR),
    }

    def call(command: str, cfg: dict[str, Any], wait: bool = True) -> api.CniResponse:
        response = api.handle(
            api.CniRequest(
                plugin=config["type"],
                env={**env, "CNI_COMMAND": command},
                stdin=json.dumps(cfg).encode(),
                reaper=reaper,
            )
        )
        if response.exit_code != 0:
            raise SystemExit(f"profile {command} failed: {response.stdout!r}")
        if wait and command == "DEL" and not reaper.wait_idle(30):  # each call alone
            raise SystemExit("profile: the reaper did not finish")
        return response

    # Warm up: the server has everything imported and its sockets open.
    call("DEL", with_prev(config, call("ADD", config).stdout))
    wall: dict[str, list[float]] = {"ADD": [], "DEL": []}
    cpu: dict[str, list[float]] = {"ADD": [], "DEL": []}
    unlink: list[float] = []
    reaped: list[float] = []  # from DEL's start until the reaper's RTM_DELLINK returned
    # How long the reaper waits for the kernel to unregister the pair (an RCU barrier).
    original = rtnl.Rtnl.del_group
    spent = [0.0]

    def timed_del_group(self: rtnl.Rtnl, group: int) -> None:
        started = time.perf_counter()
        try:
            original(self, group)
        finally:
            spent[0] += time.perf_counter() - started

    rtnl.Rtnl.del_group = timed_del_group  # type: ignore[method-assign]
    try:
        for _ in range(n):
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            added = call("ADD", config)
            wall["ADD"].append((time.perf_counter() - wall_start) * 1000)
            cpu["ADD"].append((time.thread_time() - cpu_start) * 1000)
            del_config = with_prev(config, added.stdout)
            spent[0] = 0.0
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            response = api.handle(
                api.CniRequest(
                    plugin=config["type"],
                    env={**env, "CNI_COMMAND": "DEL"},
                    stdin=json.dumps(del_config).encode(),
                    reaper=reaper,
                )
            )
            wall["DEL"].append((time.perf_counter() - wall_start) * 1000)
            cpu["DEL"].append((time.thread_time() - cpu_start) * 1000)
            if response.exit_code != 0 or not reaper.wait_idle(30):
                raise SystemExit(f"profile DEL failed: {response.stdout!r}")
            reaped.append((time.perf_counter() - wall_start) * 1000)
            unlink.append(spent[0] * 1000)
    finally:
        rtnl.Rtnl.del_group = original  # type: ignore[method-assign]
    profiler = cProfile.Profile()
    for _ in range(n // 2):
        profiler.enable()
        added = call("ADD", config)
        call("DEL", with_prev(config, added.stdout), wait=False)
        profiler.disable()
        reaper.wait_idle(30)
    reaper.stop()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    out = {f"{verb}_p50": statistics.median(ms) for verb, ms in wall.items()}
    out |= {f"{verb}_cpu_p50": statistics.median(ms) for verb, ms in cpu.items()}
    out["DEL_unlink_p50"] = statistics.median(unlink)
    out["DEL_reaped_p50"] = statistics.median(reaped)
    return out, text.getvalue()
