"""cniwarden-host-local exec'd as a runtime would, against a real on-disk store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.plugin.conftest import (
    CniRun,
    PausedPlugins,
    RunCni,
    kill_once_paused,
    skip_for_shims,
    spawn_add,
)
from tests.integration.plugin.kernel import Netns, unique

pytestmark = pytest.mark.root
HL = "cniwarden-host-local"


def conf(data_dir: Path, *, version: str = "1.1.0", name: str = "", **ipam: Any) -> dict[str, Any]:
    ipam.setdefault("type", HL)
    ipam.setdefault("dataDir", str(data_dir))
    if "subnet" not in ipam and "ranges" not in ipam:
        ipam["subnet"] = "10.77.0.0/24"
    return {"cniVersion": version, "name": name or unique("hl"), "type": HL, "ipam": ipam}


def leases(data_dir: Path, network: str) -> dict[str, str]:
    d = data_dir / network
    if not d.is_dir():
        return {}
    return {
        p.name: p.read_bytes().decode() for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name
    }


def add(run_cni: RunCni, c: dict[str, Any], cid: str, **kw: Any) -> CniRun:
    return run_cni(HL, "ADD", c, container_id=cid, netns="/var/run/netns/unused", **kw)


def test_add_writes_reference_layout_and_del_is_idempotent(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path, routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.9"}])
    out = add(run_cni, c, "ctr-a").expect_ok()
    assert out["cniVersion"] == "1.1.0"
    assert out["ips"] == [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.9"}]
    assert leases(tmp_path, c["name"]) == {"10.77.0.2": "ctr-a\r\neth0"}
    store = tmp_path / c["name"]
    assert (store / "last_reserved_ip.0").read_text() == "10.77.0.2"
    assert (store / "lock").exists()

    for _ in range(2):
        run_cni(HL, "DEL", c, container_id="ctr-a").expect_ok()
        assert leases(tmp_path, c["name"]) == {}
    # DEL for a network that never allocated anything succeeds too.
    run_cni(HL, "DEL", conf(tmp_path), container_id="ctr-z").expect_ok()


def test_round_robin_does_not_reuse_a_just_released_address(
    run_cni: RunCni, tmp_path: Path
) -> None:
    c = conf(tmp_path, subnet="10.77.1.0/29")
    first = add(run_cni, c, "a").expect_ok()["ips"][0]["address"]
    run_cni(HL, "DEL", c, container_id="a").expect_ok()
    second = add(run_cni, c, "b").expect_ok()["ips"][0]["address"]
    assert (first, second) == ("10.77.1.2/29", "10.77.1.3/29")
    # Wraps around the range (gateway .1 is never handed out).
    got = [add(run_cni, c, f"c{i}").expect_ok()["ips"][0]["address"] for i in range(4)]
    assert got == ["10.77.1.4/29", "10.77.1.5/29", "10.77.1.6/29", "10.77.1.2/29"]


def test_dual_stack_range_sets_and_version_conversion(run_cni: RunCni, tmp_path: Path) -> None:
    ranges = [
        [{"subnet": "10.77.2.0/24", "rangeStart": "10.77.2.50", "rangeEnd": "10.77.2.60"}],
        [{"subnet": "fd00:77::/64"}],
    ]
    c = conf(tmp_path, ranges=ranges, version="0.4.0")
    out = add(run_cni, c, "dual").expect_ok()
    assert out["cniVersion"] == "0.4.0"
    assert out["ips"] == [
        {"version": "4", "address": "10.77.2.50/24", "gateway": "10.77.2.1"},
        {"version": "6", "address": "fd00:77::2/64", "gateway": "fd00:77::1"},
    ]
    assert set(leases(tmp_path, c["name"])) == {"10.77.2.50", "fd00:77::2"}
    assert (tmp_path / c["name"] / "last_reserved_ip.1").read_text() == "fd00:77::2"
    run_cni(HL, "DEL", c, container_id="dual").expect_ok()
    assert leases(tmp_path, c["name"]) == {}


def test_runtime_ip_ranges_come_first(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path, subnet="10.77.10.0/24")
    c["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.77.11.0/24", "rangeStart": "10.77.11.9"}]]}
    out = add(run_cni, c, "rr").expect_ok()
    assert [ip["address"] for ip in out["ips"]] == ["10.77.11.9/24", "10.77.10.2/24"]


def test_version_0_2_0_result_uses_ip4_ip6(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(
        tmp_path,
        version="0.2.0",
        ranges=[[{"subnet": "10.77.3.0/24"}], [{"subnet": "fd00:78::/64"}]],
        routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    )
    out = add(run_cni, c, "old").expect_ok()
    assert out["ip4"] == {
        "ip": "10.77.3.2/24",
        "gateway": "10.77.3.1",
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert out["ip6"]["ip"] == "fd00:78::2/64"
    assert out["ip6"]["routes"] == [{"dst": "::/0"}]


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ({"cni_args": "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.77.4.40"}, "10.77.4.40/24"),
        ({"args": {"cni": {"ips": ["10.77.4.41/24"]}}}, "10.77.4.41/24"),
        ({"runtimeConfig": {"ips": ["10.77.4.42"]}}, "10.77.4.42/24"),
        # args wins over runtimeConfig when both carry `ips` (CONVENTIONS.md)
        (
            {"args": {"cni": {"ips": ["10.77.4.43"]}}, "runtimeConfig": {"ips": ["10.77.4.44"]}},
            "10.77.4.43/24",
        ),
    ],
)
def test_requested_addresses(
    run_cni: RunCni, tmp_path: Path, how: dict[str, Any], expected: str
) -> None:
    c = conf(tmp_path, subnet="10.77.4.0/24")
    how = dict(how)  # the parameter is shared by every plugin path: do not mutate it
    kw = {}
    if "cni_args" in how:
        kw["cni_args"] = how.pop("cni_args")
    c.update(how)
    out = add(run_cni, c, "req", **kw).expect_ok()
    assert [ip["address"] for ip in out["ips"]] == [expected]


def test_requested_address_errors_are_specific(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path, subnet="10.77.5.0/24")
    add(run_cni, c, "a", cni_args="IP=10.77.5.7").expect_ok()
    msg = add(run_cni, c, "b", cni_args="IP=10.77.5.7").expect_error(111)
    assert "10.77.5.7" in msg and c["name"] in msg
    assert "gateway" in add(run_cni, c, "c", cni_args="IP=10.77.5.1").expect_error(111)
    assert "10.99.9.9" in add(run_cni, c, "d", cni_args="IP=10.99.9.9").expect_error(111)
    assert "CNI_ARGS" in add(run_cni, c, "e", cni_args="IP=nonsense").expect_error(4)
    # Nothing was leaked by the failed attempts.
    assert leases(tmp_path, c["name"]) == {"10.77.5.7": "a\r\neth0"}


def test_exhausted_range_names_network_and_range_and_status_reports_50(
    run_cni: RunCni, tmp_path: Path
) -> None:
    ranges = [[{"subnet": "10.77.6.0/24", "rangeStart": "10.77.6.10", "rangeEnd": "10.77.6.12"}]]
    c = conf(tmp_path, ranges=ranges)
    run_cni(HL, "STATUS", c).expect_ok()
    for i in range(3):
        add(run_cni, c, f"x{i}").expect_ok()
    msg = add(run_cni, c, "x3").expect_error(110)
    assert c["name"] in msg and "10.77.6.10-10.77.6.12" in msg
    status = run_cni(HL, "STATUS", c)
    assert c["name"] in status.expect_error(50)
    run_cni(HL, "DEL", c, container_id="x1").expect_ok()
    run_cni(HL, "STATUS", c).expect_ok()
    assert add(run_cni, c, "x3").expect_ok()["ips"][0]["address"] == "10.77.6.11/24"


def test_failed_second_range_set_releases_the_first(run_cni: RunCni, tmp_path: Path) -> None:
    ranges = [
        [{"subnet": "10.77.7.0/24"}],
        [{"subnet": "fd00:79::/64", "rangeStart": "fd00:79::5", "rangeEnd": "fd00:79::5"}],
    ]
    c = conf(tmp_path, ranges=ranges)
    add(run_cni, c, "one").expect_ok()
    add(run_cni, c, "two").expect_error(110)
    assert set(leases(tmp_path, c["name"])) == {"10.77.7.2", "fd00:79::5"}


def test_duplicate_add_is_refused(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path)
    add(run_cni, c, "dup").expect_ok()
    assert "duplicate" in add(run_cni, c, "dup").expect_error(112)
    # Same container, another interface is a different attachment.
    add(run_cni, c, "dup", ifname="net1").expect_ok()


def test_check(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path)
    prev = add(run_cni, c, "chk").expect_ok()
    checked = dict(c, prevResult=prev)
    run_cni(HL, "CHECK", checked, container_id="chk", netns="/x").expect_ok()
    run_cni(HL, "DEL", c, container_id="chk").expect_ok()
    run_cni(HL, "CHECK", checked, container_id="chk", netns="/x").expect_error(140)
    old = dict(c, cniVersion="0.3.1")
    run_cni(HL, "CHECK", old, container_id="chk", netns="/x").expect_error(1)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_everything_not_listed(run_cni: RunCni, tmp_path: Path, key: str) -> None:
    c = conf(tmp_path)
    for cid in ("keep", "drop1", "drop2"):
        add(run_cni, c, cid).expect_ok()
    store = tmp_path / c["name"]
    (store / "10.77.0.200").write_text("legacy-keep")  # reference < v0.8 wrote the id only
    (store / "10.77.0.201").write_text("legacy-drop")
    (store / "10.77.0.202").write_text("")  # half-written by a crashed writer
    (store / ".cniwarden-1-abc.tmp").write_text("drop3\r\neth0")
    gc = dict(
        c,
        **{
            key: [
                {"containerID": "keep", "ifname": "eth0"},
                {"containerID": "legacy-keep", "ifname": "eth0"},
            ]
        },
    )
    run_cni(HL, "GC", gc).expect_ok()
    assert leases(tmp_path, c["name"]) == {
        "10.77.0.2": "keep\r\neth0",
        "10.77.0.200": "legacy-keep",
    }
    assert not (store / ".cniwarden-1-abc.tmp").exists()
    run_cni(HL, "GC", dict(c, cniVersion="1.0.0", **{key: []})).expect_error(1)


def test_parallel_adds_never_share_an_address(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path, subnet="10.77.8.0/24")

    def one(i: int) -> CniRun:
        return run_cni(HL, "ADD", c, container_id=f"par{i}", netns="/x", timeout=120)

    with ThreadPoolExecutor(max_workers=24) as pool:
        runs = list(pool.map(one, range(48)))
    assert all(r.ok for r in runs), [r.stdout for r in runs if not r.ok]
    addresses = [r.output["ips"][0]["address"] for r in runs]
    assert len(set(addresses)) == 48
    held = leases(tmp_path, c["name"])
    assert len(held) == 48 and {v.split("\r\n")[0] for v in held.values()} == {
        f"par{i}" for i in range(48)
    }


def test_killed_add_leaves_no_lease_after_gc(
    cni_bin_dir: Path,
    cni_host: Netns,
    tmp_path: Path,
    run_cni: RunCni,
    paused_plugins: PausedPlugins,
) -> None:
    skip_for_shims(cni_bin_dir)
    c = conf(tmp_path)
    kill_once_paused(
        spawn_add(paused_plugins.bin_dir, cni_host, HL, c, "killed", "/x"), paused_plugins
    )
    assert leases(tmp_path, c["name"]) == {"10.77.0.2": "killed\r\neth0"}  # the leak
    add(run_cni, c, "alive").expect_ok()
    gc = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "alive", "ifname": "eth0"}]})
    run_cni(HL, "GC", gc).expect_ok()
    assert leases(tmp_path, c["name"]) == {"10.77.0.3": "alive\r\neth0"}


def test_resolv_conf_becomes_dns(run_cni: RunCni, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\nnameserver 10.0.0.10\nnameserver 10.0.0.11\n"
        "domain example.com\nsearch a.example b.example\noptions ndots:5 edns0\n"
    )
    out = add(run_cni, conf(tmp_path, resolvConf=str(resolv)), "dns").expect_ok()
    assert out["dns"] == {
        "nameservers": ["10.0.0.10", "10.0.0.11"],
        "domain": "example.com",
        "search": ["a.example", "b.example"],
        "options": ["ndots:5", "edns0"],
    }


def test_keys_match_case_insensitively_like_go(run_cni: RunCni, tmp_path: Path) -> None:
    c = {
        "cniVersion": "1.0.0",
        "name": unique("hl"),
        "IPAM": {
            "Type": HL,
            "DATADIR": str(tmp_path),
            "subnet": "10.77.9.0/24",
            "RangeStart": "10.77.9.100",
        },
    }
    out = add(run_cni, c, "case").expect_ok()
    assert out["ips"][0]["address"] == "10.77.9.100/24"


def test_cni_versions_list_is_honoured(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path, version="1.0.0")
    c["cniVersions"] = ["0.4.0", "1.1.0"]
    assert add(run_cni, c, "v").expect_ok()["cniVersion"] == "1.1.0"
    c = conf(tmp_path, version="1.0.0")
    c["cniVersions"] = ["9.0.0"]
    assert add(run_cni, c, "w").expect_ok()["cniVersion"] == "1.0.0"
    c = conf(tmp_path)
    del c["cniVersion"]
    c["cniVersions"] = ["2.0.0"]
    add(run_cni, c, "x").expect_error(1)


@pytest.mark.parametrize(
    ("ipam", "field", "code"),
    [
        ({"subnet": 5}, "ipam.subnet", 7),
        ({"subnet": "10.77.0.0/33"}, "ipam.subnet", 7),
        ({"subnet": "not-a-cidr"}, "ipam.subnet", 7),
        ({"subnet": "10.77.0.0/31"}, "too small", 7),
        ({"subnet": "10.77.0.5/24"}, "host bits", 7),
        ({"subnet": "10.77.0.0/24", "rangeStart": "10.78.0.1"}, "ipam.rangeStart", 7),
        (
            {"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.9", "rangeEnd": "10.77.0.3"},
            "ipam.rangeStart",
            7,
        ),
        ({"subnet": "10.77.0.0/24", "gateway": "fd00::1"}, "ipam.gateway", 7),
        (
            {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "10.77.0.0/25"}]]},
            "ipam.ranges[1]",
            7,
        ),
        (
            {"ranges": [[{"subnet": "10.77.0.0/24"}, {"subnet": "10.77.0.128/25"}]]},
            "ipam.ranges[0][1]",
            7,
        ),
        ({"ranges": [[]]}, "empty range set", 7),
        ({"ranges": "10.0.0.0/8"}, "ipam.ranges", 7),
        ({"routes": [{"dst": "10.0.0.0"}]}, "ipam.routes[0].dst", 7),
        ({"dataDir": True}, "ipam.dataDir", 7),
    ],
)
def test_invalid_config_names_the_field(
    run_cni: RunCni, tmp_path: Path, ipam: dict[str, Any], field: str, code: int
) -> None:
    c = conf(tmp_path)
    c["ipam"].pop("subnet", None)
    c["ipam"].update(ipam)
    if "subnet" not in c["ipam"] and "ranges" not in c["ipam"]:
        c["ipam"]["subnet"] = "10.77.0.0/24"
    msg = add(run_cni, c, "bad").expect_error(code)
    assert field in msg
    assert leases(tmp_path, c["name"]) == {}


def test_missing_ipam_and_missing_name(run_cni: RunCni, tmp_path: Path) -> None:
    assert "ipam" in add(run_cni, {"cniVersion": "1.0.0", "name": "x"}, "a").expect_error(7)
    assert "name" in add(run_cni, {"cniVersion": "1.0.0", "ipam": {}}, "a").expect_error(7)
    assert "name" in add(run_cni, {"cniVersion": "1.0.0", "name": "bad name"}, "a").expect_error(7)


def test_bad_stdin_and_env(run_cni: RunCni, tmp_path: Path) -> None:
    c = conf(tmp_path)
    assert run_cni(HL, "ADD", b"{not json", container_id="a", netns="/x").expect_error(6)
    assert run_cni(HL, "ADD", b"[1, 2]", container_id="a", netns="/x").expect_error(6)
    assert run_cni(HL, "ADD", dict(c, cniVersion=1), container_id="a", netns="/x").code == 6
    assert run_cni(
        HL, "ADD", dict(c, cniVersion="9.9.9"), container_id="a", netns="/x"
    ).expect_error(1)
    assert "CNI_CONTAINERID" in run_cni(HL, "ADD", c, netns="/x").expect_error(4)
    assert "CNI_NETNS" in run_cni(HL, "ADD", c, container_id="a").expect_error(4)
    assert "CNI_CONTAINERID" in run_cni(HL, "ADD", c, container_id="a b", netns="/x").expect_error(
        4
    )
    for bad in ("a/b", "x" * 16, "..", "a b"):
        assert "CNI_IFNAME" in run_cni(
            HL, "ADD", c, container_id="a", netns="/x", ifname=bad
        ).expect_error(4)
    assert "FROB" in run_cni(HL, "FROB", c).expect_error(4)
    assert "CNI_ARGS" in run_cni(
        HL, "ADD", c, container_id="a", netns="/x", cni_args="FOO=bar"
    ).expect_error(4)
    assert leases(tmp_path, c["name"]) == {}


def test_version_and_about(run_cni: RunCni) -> None:
    out = run_cni(HL, "VERSION", b"").expect_ok()
    assert out == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    about = run_cni(HL, "", b"")
    assert about.exit_code == 0 and about.output is None and "1.1.0" in about.stderr
