"""cniwarden-bridge delegating IPAM by exec through CNI_PATH: reference host-local, static, dhcp."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.plugin import hanging
from tests.integration.plugin.conftest import RunCni
from tests.integration.plugin.kernel import (
    Netns,
    create_netns,
    delete_netns,
    run,
    unique,
    wait_until,
)

pytestmark = pytest.mark.root
BR = "cniwarden-bridge"
Sandbox = Callable[[], Netns]


def bconf(ipam: dict[str, Any], version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": unique("dlg"),
        "type": BR,
        "bridge": unique("cwg"),
        "ipam": ipam,
        **fields,
    }


def test_reference_host_local_as_delegate(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    c = bconf(
        {"type": "host-local", "subnet": "10.44.0.0/24", "dataDir": str(tmp_path)}, isGateway=True
    )
    sb = sandbox()
    out = run_cni(BR, "ADD", c, container_id="d1", netns=sb).expect_ok()
    assert out["ips"] == [{"interface": 2, "address": "10.44.0.2/24", "gateway": "10.44.0.1"}]
    assert sb.addrs("eth0") == ["10.44.0.2/24"]
    assert (tmp_path / c["name"] / "10.44.0.2").read_bytes() == b"d1\r\neth0"
    run_cni(BR, "CHECK", dict(c, prevResult=out), container_id="d1", netns=sb).expect_ok()
    run_cni(BR, "DEL", c, container_id="d1", netns=sb).expect_ok()
    assert not (tmp_path / c["name"] / "10.44.0.2").exists()
    # The Debian reference predates CNI 1.1.0: GC and STATUS are not forwarded errors.
    run_cni(BR, "GC", dict(c, cniVersion="1.1.0")).expect_ok()
    run_cni(BR, "STATUS", dict(c, cniVersion="1.1.0")).expect_ok()
    # ...but its own errors come through with their code.
    bad = dict(c, cniVersion="1.1.0")
    msg = run_cni(BR, "ADD", bad, container_id="d2", netns=sandbox()).expect_error(1)
    assert "host-local" in msg
    assert [x for x in cni_host.links() if x["ifname"].startswith("veth")] == []


def test_static_as_delegate(run_cni: RunCni, cni_host: Netns, sandbox: Sandbox) -> None:
    ipam = {
        "type": "static",
        "addresses": [
            {"address": "10.45.0.9/24", "gateway": "10.45.0.1"},
            {"address": "fd00:45::9/64"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.45.0.53"]},
    }
    c = bconf(ipam, isGateway=True)
    sb = sandbox()
    out = run_cni(BR, "ADD", c, container_id="s1", netns=sb).expect_ok()
    assert [ip["address"] for ip in out["ips"]] == ["10.45.0.9/24", "fd00:45::9/64"]
    assert out["dns"] == {"nameservers": ["10.45.0.53"]}
    assert sb.addrs("eth0") == ["10.45.0.9/24", "fd00:45::9/64"]
    assert {r["dst"]: r.get("gateway") for r in sb.routes("-4")}["default"] == "10.45.0.1"
    assert cni_host.addrs(c["bridge"]) == ["10.45.0.1/24", "fd00:45::1/64"]
    run_cni(BR, "DEL", c, container_id="s1", netns=sb).expect_ok()
    assert sb.link("eth0") is None


def test_missing_delegate_is_reported_and_nothing_leaks(
    run_cni: RunCni, cni_host: Netns, sandbox: Sandbox
) -> None:
    c = bconf({"type": "no-such-ipam"})
    msg = run_cni(BR, "ADD", c, container_id="x", netns=sandbox()).expect_error(130)
    assert "no-such-ipam" in msg
    assert [x for x in cni_host.links() if x["ifname"].startswith("veth")] == []
    assert "ipam.type" in run_cni(
        BR, "ADD", bconf({"type": "../bin/sh"}), container_id="x", netns=sandbox()
    ).expect_error(7)


def test_a_hanging_delegate_is_killed_with_its_process_group_and_named(
    run_cni: RunCni, cni_bin_dir: Path, cni_host: Netns, sandbox: Sandbox, tmp_path: Path
) -> None:
    if cni_bin_dir.name.startswith("cni-bin-shim"):
        pytest.skip("the server bounds delegates by its request deadline: fastpath/test_hang.py")
    pids = tmp_path / "pids"
    delegates = tmp_path / "delegates"
    hanging.install(delegates, "hang-ipam", pids)
    c = bconf({"type": "hang-ipam"})
    sb = sandbox()
    env = {"CNI_PATH": f"{delegates}:{cni_bin_dir}", "CNIWARDEN_DELEGATE_TIMEOUT": "1"}
    try:
        # A plugin that waited for its delegate would run into this timeout: test failed.
        out = run_cni(BR, "ADD", c, container_id="h1", netns=sb, env=env, timeout=60)
        assert len(hanging.started(pids)) == 2, "the delegate and its child both ran"
        wait_until(
            lambda: not any(hanging.running(pid, pids) for pid in hanging.started(pids)),
            "the plugin to kill the delegate's process group",
        )
    finally:
        hanging.kill_all(pids)  # only when the test failed is anything left
    msg = out.expect_error(132)
    assert msg.startswith("IPAM plugin hang-ipam ADD did not answer within 1.0s: killed it")
    assert str(delegates / "hang-ipam") in msg
    assert sb.link("eth0") is None, "the failed ADD was undone"
    assert [x for x in cni_host.links() if x["ifname"].startswith("veth")] == []
    # A timeout that is not a number is refused by name (and the ADD undone).
    bad = dict(env, CNIWARDEN_DELEGATE_TIMEOUT="soon")
    msg = run_cni(BR, "ADD", c, container_id="h2", netns=sb, env=bad).expect_error(4)
    assert "CNIWARDEN_DELEGATE_TIMEOUT" in msg
    assert sb.link("eth0") is None


class DhcpLab:
    """A DHCP server (busybox udhcpd) on the bridge and the reference dhcp daemon."""

    def __init__(self, host: Netns, bridge: str, work: Path) -> None:
        self.host, self.bridge, self.work = host, bridge, work
        self.server_ns = create_netns("cwdhcp-")
        self.socket = work / "dhcp.sock"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        h, srv = self.host.name, self.server_ns.name
        run("ip", "-n", h, "link", "add", self.bridge, "type", "bridge")
        run("ip", "-n", h, "link", "set", self.bridge, "up")
        run(
            "ip",
            "-n",
            h,
            "link",
            "add",
            "srvport",
            "type",
            "veth",
            "peer",
            "name",
            "srv0",
            "netns",
            srv,
        )
        run("ip", "-n", h, "link", "set", "srvport", "master", self.bridge, "up")
        run("ip", "-n", srv, "addr", "add", "10.46.0.1/24", "dev", "srv0")
        run("ip", "-n", srv, "link", "set", "srv0", "up")
        leases = self.work / "udhcpd.leases"
        leases.write_text("")
        conf = self.work / "udhcpd.conf"
        conf.write_text(
            "start 10.46.0.100\nend 10.46.0.150\ninterface srv0\n"
            f"lease_file {leases}\npidfile {self.work / 'udhcpd.pid'}\n"
            "option subnet 255.255.255.0\noption router 10.46.0.1\noption lease 600\n"
        )
        self._spawn(["ip", "netns", "exec", srv, "busybox", "udhcpd", "-f", str(conf)])
        self._spawn(
            [
                "nsenter",
                f"--net={self.host.path}",
                "/usr/lib/cni/dhcp",
                "daemon",
                "-socketpath",
                str(self.socket),
                "-timeout",
                "30s",  # for one lease exchange; generous for a loaded machine
            ]
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            assert time.monotonic() < deadline, "dhcp daemon did not start"
            assert all(p.poll() is None for p in self.procs), "a DHCP process died"
            time.sleep(0.05)

    def _spawn(self, argv: list[str]) -> None:
        log = (self.work / f"{argv[-1].replace('/', '_')}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=log))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        delete_netns(self.server_ns)


@pytest.fixture
def dhcp_lab(cni_host: Netns, tmp_path: Path) -> Iterator[DhcpLab]:
    if not Path("/usr/lib/cni/dhcp").exists() or subprocess.run(
        ["busybox", "udhcpd", "--help"], capture_output=True, check=False
    ).returncode not in (0, 1):
        pytest.fail("needs /usr/lib/cni/dhcp and busybox udhcpd (make debs)")
    lab = DhcpLab(cni_host, unique("cwq"), tmp_path)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def test_dhcp_as_delegate(run_cni: RunCni, dhcp_lab: DhcpLab, sandbox: Sandbox) -> None:
    c = bconf({"type": "dhcp", "daemonSocketPath": str(dhcp_lab.socket)})
    c["bridge"] = dhcp_lab.bridge
    sb = sandbox()
    out = run_cni(BR, "ADD", c, container_id="dh1", netns=sb, timeout=60).expect_ok()
    address = out["ips"][0]["address"]
    assert address.startswith("10.46.0.1") and address.endswith("/24"), out
    assert out["ips"][0]["gateway"] == "10.46.0.1"
    assert sb.addrs("eth0") == [address]
    sb.exec("ping", "-c", "1", "-W", "2", "10.46.0.1")
    run_cni(BR, "DEL", c, container_id="dh1", netns=sb, timeout=60).expect_ok()
    assert sb.link("eth0") is None
