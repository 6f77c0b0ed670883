"""Pure parts of the local-cluster tooling: naming, address plan, config writers, images."""

from __future__ import annotations

import gzip
import hashlib
import io
import ipaddress
import json
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

from devtools.localcluster import (
    containerd,
    crio,
    hostres,
    images,
    kubeproxy,
    nodemounts,
    nodenet,
    nodesysctls,
    procs,
    slots,
)
from devtools.localcluster.egress import egress_config
from devtools.localcluster.egressproxy import BadConnectError, parse_connect
from devtools.localcluster.layout import (
    MAX_SLOTS,
    Layout,
    Ports,
    parse_runtimes,
    runtime_of,
    validate_name,
)
from devtools.localcluster.state import ClusterState, NodeRecord, ProcessRecord
from devtools.localcluster.tiers import Tier

IFNAMSIZ = 15


def test_tiers_are_ordered_and_parse_with_a_clear_error() -> None:
    assert Tier.REAL_NODE.includes(Tier.FAKE_NODES)
    assert Tier.FAKE_NODES.includes(Tier.CONTROL_PLANE)
    assert not Tier.CONTROL_PLANE.includes(Tier.FAKE_NODES)
    assert Tier.highest([Tier.FAKE_NODES, Tier.CONTROL_PLANE]) is Tier.FAKE_NODES
    assert Tier.highest([]) is None
    with pytest.raises(ValueError, match="choose one of: control-plane, fake-nodes, real-node"):
        Tier.parse("real-nodes")


@pytest.mark.parametrize("name", ["Dev", "1dev", "dev_1", "-dev", "dev-", "a" * 31, ""])
def test_invalid_cluster_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid cluster name"):
        validate_name(name)


def test_slots_never_share_ports_or_subnets() -> None:
    seen_ports: set[int] = set()
    subnets = set()
    for slot in range(MAX_SLOTS):
        ports = Ports.for_slot(slot).all()
        assert len(set(ports)) == len(ports)
        assert not seen_ports & set(ports)
        seen_ports |= set(ports)
        subnets.add(Layout(Path("/x"), "c", slot, "abcdef").node_subnet)
    assert len(subnets) == MAX_SLOTS
    assert max(seen_ports) < 32768, "stay below the kernel's ephemeral port range"


def test_node_names_fit_the_kernel_and_addresses_fit_the_subnet() -> None:
    layout = Layout(Path("/var/tmp/c"), "a" * 30, 99, "abcdef")
    for index in (0, 1, 199):
        node = layout.node(index)
        assert len(node.netns) <= IFNAMSIZ
        assert len(node.veth_host) <= IFNAMSIZ
        assert ipaddress.IPv4Address(node.ip) in layout.node_subnet
        assert node.ip != layout.bridge_ip
        assert node.cni_conf_dir == node.dir / "host/etc/cni/net.d"
        assert node.cni_bin_dir == node.dir / "host/opt/cni/bin"
        assert node.cni_state_dir == node.dir / "host/var/lib/cni"
    assert len(layout.bridge) <= IFNAMSIZ
    assert layout.node(0).name == f"{'a' * 30}-worker"
    assert layout.node(1).name == f"{'a' * 30}-worker2"
    # unix sockets are limited to 107 bytes
    assert len(str(layout.node(199).containerd_socket)) < 108


def test_containerd_config_is_valid_toml_with_our_dirs() -> None:
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(0)
    text = containerd.containerd_config(node)
    parsed = tomllib.loads(text)
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["cni"]["conf_dir"] == str(node.cni_conf_dir)
    assert cri["cni"]["bin_dir"] == str(node.cni_bin_dir)
    # Pod netns files at /run/netns, which is the node's own dir in its mount namespace.
    assert cri["netns_mounts_under_state_dir"] is False
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert parsed["grpc"]["address"] == str(node.containerd_socket)


def test_containerd_2_config_puts_pod_netns_where_the_agent_pod_sees_them() -> None:
    # containerd 2.x reads config version 3: a netns under its state dir is out of
    # the cni-server pod's reach, and every ADD on the node failed with ENOENT.
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(0, runtime="containerd-2")
    parsed = tomllib.loads(containerd.containerd_config(node))
    assert parsed["version"] == 3
    cri = parsed["plugins"]["io.containerd.cri.v1.runtime"]
    assert cri["netns_mounts_under_state_dir"] is False
    assert cri["cni"]["conf_dir"] == str(node.cni_conf_dir)


def test_runtimes_parse_per_node_with_a_clear_error() -> None:
    assert parse_runtimes("containerd-2, crio") == ["containerd-2", "crio"]
    assert [runtime_of(["containerd-2", "crio"], i) for i in range(3)] == [
        "containerd-2",
        "crio",
        "crio",
    ]
    assert runtime_of([], 0) == "containerd-1.6"
    with pytest.raises(ValueError, match=r"unknown runtime\(s\) docker: use containerd-1.6, "):
        parse_runtimes("crio,docker")
    with pytest.raises(ValueError, match="unknown runtime"):
        parse_runtimes(" , ")


def test_containerd_2_config_is_version_3_with_our_dirs_and_no_nri() -> None:
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(1, "containerd-2")
    parsed = tomllib.loads(containerd.containerd_config(node))
    assert parsed["version"] == 3
    runtime = parsed["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["cni"]["bin_dirs"] == [str(node.cni_bin_dir)]
    assert runtime["cni"]["conf_dir"] == str(node.cni_conf_dir)
    assert runtime["restrict_oom_score_adj"] is True
    images_cfg = parsed["plugins"]["io.containerd.cri.v1.images"]
    assert images_cfg["pinned_images"]["sandbox"].endswith("/pause:3.10")
    assert parsed["plugins"]["io.containerd.nri.v1.nri"]["disable"] is True
    assert parsed["grpc"]["address"] == str(node.runtime_socket)
    assert node.runtime_socket == node.host_root / "run/containerd/containerd.sock"
    assert containerd.runtime_env("containerd-2")["PATH"].startswith(
        str(containerd.runtime_bin_dir("containerd-2"))
    )
    assert containerd.runtime_env("containerd-1.6") == {}


def test_crio_config_keeps_every_path_in_the_node(tmp_path: Path) -> None:
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(0, "crio")
    parsed = tomllib.loads(crio.crio_config(node))["crio"]
    assert node.runtime_socket == node.host_root / "run/crio/crio.sock"
    assert parsed["api"]["listen"] == str(node.runtime_socket)
    assert parsed["network"] == {
        "network_dir": str(node.cni_conf_dir),
        "plugin_dirs": [str(node.cni_bin_dir)],
    }
    assert parsed["runtime"]["cgroup_manager"] == "cgroupfs"
    assert parsed["image"]["pause_command"] == "/pause"
    paths = [parsed["root"], parsed["runroot"]]
    assert all(p.startswith(str(node.dir)) for p in paths)
    # Pinned namespaces at /run/<kind>ns/<id> as on a real node: in the node's mount
    # namespace each of those is the node's own directory, and /run/netns is the one
    # the agent pod mounts (a netns elsewhere failed every ADD with ENOENT).
    assert parsed["runtime"]["namespaces_dir"] == "/run"
    binds = nodemounts.node_binds(node)
    for kind in ("net", "ipc", "uts", "user", "pid"):
        assert str(binds[Path(f"/run/{kind}ns")]).startswith(str(node.dir))


def test_bridge_conflist_uses_the_node_pod_cidr() -> None:
    conf = nodenet.bridge_conflist("10.244.3.0/24", Path("/d"))
    plugins = conf["plugins"]
    assert isinstance(plugins, list)
    ranges = plugins[0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]
    assert plugins[0]["ipam"]["routes"] == [{"dst": "10.244.0.0/16", "gw": "10.244.3.1"}]
    routed = nodenet.bridge_conflist("10.244.3.0/24", Path("/d"), node_subnet="10.231.4.0/24")
    assert routed["plugins"][0]["ipam"]["routes"][1] == {"dst": "10.231.4.0/24", "gw": "10.244.3.1"}  # type: ignore[index]


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    algo, hexd = digest.split(":")
    member = tar.extractfile(f"blobs/{algo}/{hexd}")
    assert member is not None
    data = member.read()
    assert hashlib.sha256(data).hexdigest() == hexd
    return data


def test_oci_tarball_is_a_consistent_image_layout(tmp_path: Path) -> None:
    entries = [
        images.Entry("bin", is_dir=True),
        images.Entry("bin/tool", b"\x7fELF..."),
        images.Entry("bin/sh", link="tool"),
    ]
    out = images.write_oci_tarball(
        tmp_path / "img.tar", "registry.local/x/tool:1.0", entries, {"Cmd": ["/bin/tool"]}
    )
    with tarfile.open(out) as tar:
        layout = tar.extractfile("oci-layout")
        assert layout is not None
        assert json.loads(layout.read()) == {"imageLayoutVersion": "1.0.0"}
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.loads(index_file.read())
        desc = index["manifests"][0]
        assert desc["annotations"]["io.containerd.image.name"] == "registry.local/x/tool:1.0"
        manifest = json.loads(_blob(tar, desc["digest"]))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
        layer_gz = _blob(tar, manifest["layers"][0]["digest"])
        layer = gzip.decompress(layer_gz)
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
        with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
            assert inner.getmember("bin/sh").linkname == "tool"
            assert inner.getmember("bin/tool").mtime == 0


def test_image_layers_are_reproducible(tmp_path: Path) -> None:
    entries = [images.Entry("f", b"data")]
    a = images.write_oci_tarball(tmp_path / "a.tar", "r/x:1", entries, {})
    b = images.write_oci_tarball(tmp_path / "b.tar", "r/x:1", entries, {})
    assert a.read_bytes() == b.read_bytes()


def test_toml_writer_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="cannot write"):
        containerd.toml({"x": 1.5})


def test_mountinfo_escapes_are_decoded() -> None:
    assert hostres._unescape(r"/var/tmp/a\040b\134c") == "/var/tmp/a b\\c"


def test_a_component_that_dies_reports_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    rec = procs.start("broken", ["sh", "-c", "echo 'bind: address already in use'; exit 3"], log)
    with pytest.raises(procs.ComponentError, match="address already in use") as err:
        procs.wait_ready(rec, lambda: False, timeout=60, what="/healthz")
    assert "broken exited before it was ready (/healthz; exit code 3)" in str(err.value)


def test_a_component_that_never_gets_ready_times_out_with_the_last_error(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    rec = procs.start("slow", ["sh", "-c", "echo starting; exec sleep 60"], log)

    def probe() -> bool:
        raise ConnectionRefusedError("connection refused")

    try:
        # The error quotes the log as it is at the deadline: let the component write first
        # (a loaded machine may not run the shell within the 1 s the component gets).
        deadline = time.monotonic() + 30
        while "starting" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(procs.ComponentError, match="not ready after 1s") as err:
            procs.wait_ready(rec, probe, timeout=1, what="/readyz")
        assert "connection refused" in str(err.value)
        assert "starting" in str(err.value)
    finally:
        procs.stop(rec, grace=1)
    assert not procs.is_alive(rec)


def test_sysctls_are_restored_only_where_still_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    live = {
        "kernel.panic": "10",  # kubelet's value: restore
        "vm.overcommit_memory": "2",  # someone changed it since: leave
        "fs.inotify.max_user_instances": "1024",  # raised by us: restore
    }
    monkeypatch.setattr(hostres, "read_sysctl", live.__getitem__)
    monkeypatch.setattr(hostres, "write_sysctl", live.__setitem__)
    nodesysctls.restore_sysctls(
        {"kernel.panic": "1", "vm.overcommit_memory": "0", "fs.inotify.max_user_instances": "128"}
    )
    assert live == {
        "kernel.panic": "1",
        "vm.overcommit_memory": "2",
        "fs.inotify.max_user_instances": "128",
    }


def test_a_state_written_by_another_version_loads(tmp_path: Path) -> None:
    """Clusters of other checkouts share this machine and read each other's state
    (e.g. for shared sysctls): fields this version does not know are dropped."""
    state = ClusterState(
        name="c",
        short_id="ab12",
        slot=3,
        tier="real-node",
        root=str(tmp_path),
        workdir=str(tmp_path),
        kubeconfig="k",
        server="https://127.0.0.1:1",
        processes=[ProcessRecord("etcd", 10, 20, "etcd.log")],
        nodes=[NodeRecord(0, "n0", "ns", "v", "10.0.0.1", "d", "/kubelet", "s")],
    )
    state.save()
    raw = json.loads(state.path.read_text())
    raw["proxy_mode"] = "iptables"
    raw["processes"][0]["restarts"] = 2
    raw["nodes"][0]["gpus"] = 1
    state.path.write_text(json.dumps(raw))
    loaded = ClusterState.load(state.path)
    assert loaded == state


def test_a_node_sees_its_own_dirs_at_the_paths_the_chart_mounts() -> None:
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(1)
    binds = nodemounts.node_binds(node)
    for path in (
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/var/lib/cni",
        "/run/cniwarden",
        "/var/lib/cniwarden",
        "/run/netns",
    ):
        assert binds[Path(path)].is_relative_to(node.dir), path
    assert binds[Path("/etc/cni/net.d")] == node.cni_conf_dir
    assert binds[Path("/opt/cni/bin")] == node.cni_bin_dir
    assert Path("/run/netns") in nodemounts.SHARED


def test_kube_proxy_leaves_machine_wide_knobs_alone() -> None:
    node = Layout(Path("/var/tmp/c"), "dev", 3, "abcdef").node(0)
    config = kubeproxy.kube_proxy_config(node, Path("/k"))
    assert config["mode"] == "iptables"
    assert config["hostnameOverride"] == node.name
    conntrack = config["conntrack"]
    assert isinstance(conntrack, dict)
    assert conntrack["maxPerCore"] == 0 and conntrack["min"] == 0
    iptables = config["iptables"]
    assert isinstance(iptables, dict) and iptables["localhostNodePorts"] is False


def test_a_held_mount_point_survives_another_clusters_cleanup(tmp_path: Path) -> None:
    """An empty host mount point removed by another cluster would detach every node's
    bind on it: each cluster's hold keeps it until the last one releases it."""
    point = tmp_path / "run-cniwarden"
    point.mkdir()
    slots.hold_mount_points([point], "aaaaaa")
    slots.hold_mount_points([point], "bbbbbb")
    with pytest.raises(OSError):
        point.rmdir()
    slots.release_mount_points([point], "aaaaaa")
    with pytest.raises(OSError):
        point.rmdir()
    slots.release_mount_points([point], "bbbbbb")
    point.rmdir()
    slots.release_mount_points([point], "bbbbbb")  # gone already: nothing to do


def test_the_egress_proxy_parses_only_connect_to_an_ip_and_port() -> None:
    assert parse_connect(b"CONNECT 10.244.1.5:8080 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == (
        "10.244.1.5",
        8080,
    )
    assert parse_connect(b"CONNECT [fd00::5]:10250 HTTP/1.1\r\n\r\n") == ("fd00::5", 10250)
    for bad in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.0.0.1 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.0.0.1:0 HTTP/1.1\r\n\r\n",
        b"CONNECT 10.0.0.1:70000 HTTP/1.1\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ):
        with pytest.raises(BadConnectError):
            parse_connect(bad)
    selection = egress_config(Path("/x/egress.sock"))["egressSelections"]
    assert selection == [
        {
            "name": "cluster",
            "connection": {
                "proxyProtocol": "HTTPConnect",
                "transport": {"uds": {"udsName": "/x/egress.sock"}},
            },
        }
    ]
