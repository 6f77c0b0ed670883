"""The conformance kit's pure parts: the selection, the skips, the JUnit counts, and
the local cluster's DNS and kube-proxy settings the upstream tests rely on."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from devtools.conformance import images as test_images
from devtools.conformance import junit, suite
from devtools.localcluster import clusterdns
from devtools.localcluster.kubelet import kubelet_config
from devtools.localcluster.kubeproxy import kube_proxy_config
from devtools.localcluster.layout import SERVICE_CIDR, Layout

SPECS = {
    "[sig-network] Services should serve a basic endpoint from pods [Conformance]": "run",
    "[sig-network] Networking Granular Checks: Pods should function for intra-pod "
    "communication: udp [NodeConformance] [Conformance]": "run",
    "[sig-network] Networking Granular Checks: Services should function for pod-Service: "
    "sctp [Feature:SCTPConnectivity]": "SCTP",
    "[sig-network] HostPort validates that there is no conflict between pods with same "
    "hostPort but different hostIP and protocol [LinuxOnly] [Conformance]": "run",
    "[sig-network] Services should have session affinity work for LoadBalancer service "
    "with ESIPP on [Slow] [LinuxOnly]": "LoadBalancer",
    "[sig-network] NetworkPolicyLegacy [LinuxOnly] NetworkPolicy between server and client "
    "should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]": "NetworkPolicy",
    "[sig-network] [Feature:IPv6DualStack] should create pod, add ipv6 and ipv4 ip to host "
    "ips": "IPv6",
    "[sig-network] Services should be rejected when no endpoints exist [Serial]": "Serial",
    # Run: the API server reaches pod IPs through its egress proxy (localcluster/egress.py).
    "[sig-network] DNS should provide DNS for services [Conformance]": "run",
    "[sig-network] Proxy version v1 should proxy through a service and a pod [Conformance]": "run",
    # Runs: each real node has its own UTS namespace (hostname = node name).
    "[sig-network] Networking Granular Checks: Services should function for service "
    "endpoints using hostNetwork": "run",
}


@pytest.mark.parametrize(("spec", "expected"), sorted(SPECS.items()))
def test_the_skips_take_only_what_the_environment_cannot_offer(spec: str, expected: str) -> None:
    focused = re.search(suite.FULL.focus_regex, spec) is not None
    skipped = re.search(suite.skip_regex(), spec) is not None
    entry = suite.skipped_by(spec)
    if expected == "run":
        assert focused and not skipped and entry is None
    else:
        assert skipped and entry is not None and expected in entry.pattern, entry


def test_every_skip_says_why_and_is_a_valid_regex() -> None:
    for skip in suite.SKIPS:
        re.compile(skip.pattern)
        assert len(skip.reason) > 40, skip
    re.compile(suite.skip_regex())
    for selection in suite.SELECTIONS.values():
        re.compile(selection.focus_regex)


def test_ci_runs_a_subset_of_the_full_list() -> None:
    for spec in SPECS:
        if re.search(suite.CI.focus_regex, spec):
            assert re.search(suite.FULL.focus_regex, spec)
    assert not re.search(suite.CI.focus_regex, "[sig-network] DNS should provide DNS for services")


def test_junit_counts(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(
        """<?xml version="1.0"?>
<testsuites><testsuite name="Kubernetes e2e suite" tests="5" time="12.5">
<testcase name="[SynchronizedBeforeSuite]" status="passed"></testcase>
<testcase name="[sig-network] a" status="passed"></testcase>
<testcase name="[sig-network] b" status="failed"><failure message="x">boom</failure></testcase>
<testcase name="[sig-network] c" status="skipped"><skipped message="skipped"/></testcase>
<testcase name="[sig-network] d" status="passed"></testcase>
</testsuite></testsuites>"""
    )
    results = junit.parse(report)
    assert (results.total, results.passed, results.skipped) == (4, 2, 1)
    assert results.failed == ["[sig-network] b"] and results.ran == 3
    assert results.seconds == 12.5


def test_kube_dns_is_in_the_service_range_and_kubelet_points_pods_at_it(tmp_path: Path) -> None:
    ip = clusterdns.cluster_dns_ip()
    assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(SERVICE_CIDR) and ip == "10.96.0.10"
    node = Layout(tmp_path, "t", 0, "abc").node(0)
    assert kubelet_config(node, tmp_path / "ca.crt")["clusterDNS"] == [ip]
    objects = {o["kind"]: o for o in clusterdns.manifests()}
    assert objects["Service"]["metadata"]["name"] == "kube-dns"
    assert objects["Service"]["spec"]["clusterIP"] == ip
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == clusterdns.COREDNS_IMAGE
    assert pod["containers"][0]["imagePullPolicy"] == "Never"
    corefile = objects["ConfigMap"]["data"]["Corefile"]
    assert "kubernetes cluster.local" in corefile
    assert "forward" not in corefile, "no query may leave the machine"


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_kube_proxy_modes(tmp_path: Path, mode: str) -> None:
    node = Layout(tmp_path, "t", 0, "abc").node(0)
    config = kube_proxy_config(node, tmp_path / "kubeconfig", mode)
    assert config["mode"] == mode
    assert config["conntrack"] == {
        "maxPerCore": 0,
        "min": 0,
        "tcpEstablishedTimeout": "0s",
        "tcpCloseWaitTimeout": "0s",
    }


def test_an_unknown_kube_proxy_mode_is_refused(tmp_path: Path) -> None:
    node = Layout(tmp_path, "t", 0, "abc").node(0)
    with pytest.raises(ValueError, match="ipvs"):
        kube_proxy_config(node, tmp_path / "kubeconfig", "ipvs")


def test_a_focused_run_keeps_the_skip_list() -> None:
    selection = suite.focused(r"using hostNetwork")
    hostnet = (
        "[sig-network] Networking Granular Checks: Services should function for service "
        "endpoints using hostNetwork"
    )
    assert re.search(selection.focus_regex, hostnet)
    assert not re.search(selection.focus_regex, "[sig-network] DNS should provide DNS for services")
    with pytest.raises(re.error):
        suite.focused("(")


def test_the_agnhost_image_carries_porters_tls_pair_at_its_working_dir(tmp_path: Path) -> None:
    agnhost = tmp_path / "agnhost"
    agnhost.write_bytes(b"\x7fELF not really")
    porter = tmp_path / "porter"
    porter.mkdir()
    for name in test_images.PORTER_CERTS:
        (porter / name).write_bytes(f"pem of {name}".encode())
    entries = {e.path: e for e in test_images.agnhost_entries(agnhost, porter)}
    assert entries["localhost.crt"].data == b"pem of localhost.crt"
    assert entries["localhost.key"].data == b"pem of localhost.key"
