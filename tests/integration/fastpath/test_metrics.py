"""The cni-server's /metrics: real shim requests against an in-process server, the
exposition scraped over HTTP on loopback (prometheus_client's own parser reads it)."""

from __future__ import annotations

import socket
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.parser import text_string_to_metric_families

from node_plugin.server.metrics import result_code
from node_plugin.server.protocol import Reply, Request
from tests.integration.fastpath.conftest import ServerFactory, ShimEnv
from tests.integration.plugin.kernel import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_result_code_reads_the_cni_error_code() -> None:
    assert result_code(0, b"{}") == "0"
    assert result_code(1, b'{"code": 11, "msg": "x"}') == "11"
    assert result_code(2, b"garbage") == "exit2"


def test_latency_by_verb_and_code_in_flight_and_queue_depth(
    shim: ShimEnv, start_server: ServerFactory
) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def handler(request: Request) -> Reply:
        if request.env.get("CNI_CONTAINERID") == "slow":
            entered.set()
            gate.wait(30)
        if request.env.get("CNI_CONTAINERID") == "bad":
            return Reply(1, b'{"cniVersion":"1.1.0","code":7,"msg":"bad config"}')
        return Reply(0, b'{"cniVersion":"1.1.0"}')

    server = start_server(handler, request_timeout=60)
    port = free_port()
    server.metrics.serve(f"127.0.0.1:{port}")
    assert shim.run("ADD").code == 0
    assert shim.run("ADD").code == 0
    assert shim.run("DEL", extra_env={"CNI_CONTAINERID": "bad"}).code == 1
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(shim.run, "CHECK", extra_env={"CNI_CONTAINERID": "slow"})
        assert entered.wait(30)
        busy = scrape(port)
        gate.set()
        assert slow.result().code == 0
    add = (("code", "0"), ("plugin", "cniwarden-bridge"), ("verb", "ADD"))
    bad = (("code", "7"), ("plugin", "cniwarden-bridge"), ("verb", "DEL"))
    assert busy[("cniwarden_cni_requests_in_flight", ())] == 1
    after = scrape(port)
    assert after[("cniwarden_cni_request_duration_seconds_count", add)] == 2
    assert after[("cniwarden_cni_request_duration_seconds_count", bad)] == 1
    check = (("code", "0"), ("plugin", "cniwarden-bridge"), ("verb", "CHECK"))
    assert after[("cniwarden_cni_request_duration_seconds_count", check)] == 1
    wait_until(
        lambda: scrape(port)[("cniwarden_cni_requests_in_flight", ())] == 0,
        "no request in flight",
    )
    assert after[("cniwarden_cni_del_queue_depth", ())] == 0
    assert after[("cniwarden_cni_reaper_backlog", ())] == 0
