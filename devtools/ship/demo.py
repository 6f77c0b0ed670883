"""`make demo`: cniwarden on a two-node local cluster, from nothing, narrated.

1. a local Kubernetes with two real nodes (containerd + kubelet each in its own
   network and mount namespace), no CNI config on them yet;
2. both images built here (`make images`) and imported into the nodes'
   containerd; `helm install` of the chart with the example CNINetwork: the
   controller Deployment and the agent DaemonSet run as pods under kubelet;
3. the nodes become Ready once the agent pods have written their config;
4. two pods on different nodes get addresses from their node's pod CIDR and
   talk (ping, and a TCP request/response with busybox nc) over host-gw routes;
5. cluster DNS and Services: CoreDNS (a pod, behind `kube-dns`) answers for a
   Service backed by one pod on each node, and a pod's HTTP requests to it by
   name reach both (kube-proxy, iptables mode, on every node);
6. the status a user looks at: `kubectl get cninetworks`, `kubectl get
   cninodestates`, the nodes, and each node's routes.

The cluster and the product stay up afterwards; the last lines say how to look
around and how to remove everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Sequence

from devtools.localcluster import LocalCluster
from devtools.localcluster.cluster import ClusterError, attach, down_by_name, up
from devtools.localcluster.kube import node_ready
from devtools.localcluster.pods import busybox_pod
from devtools.localcluster.tiers import Tier
from devtools.ship.install import ChartInstall, LocalNode, build_and_load, wait_for

NAMESPACE = "cniwarden-system"
RELEASE = "cniwarden"
NETWORK = "pods"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def show(cluster: LocalCluster, *args: str) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    out = cluster.kubectl(*args).stdout
    print(out.rstrip(), flush=True)
    return out


def pod(name: str, node: str, script: str) -> dict[str, object]:
    return busybox_pod(name, node, ["sh", "-c", script], grace_seconds=0)


def network_ready(cluster: LocalCluster) -> bool:
    body = json.loads(cluster.kubectl("get", "cninetwork", NETWORK, "-o", "json").stdout)
    status = body.get("status") or {}
    return status.get("nodesReady") == 2 and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )


WEB_SERVER = "hostname >/tmp/index.html && exec httpd -f -p 8080 -h /tmp"


def web_service() -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }


def show_service(cluster: LocalCluster, nodes: Sequence[LocalNode]) -> None:
    """One web pod per node behind Service `web`; demo-a resolves and fetches it by name
    until both backends have answered (kube-proxy picks one at random per connection)."""
    backends = []
    for i, node in enumerate(nodes):
        manifest = busybox_pod(
            f"web-{i}", node.name, ["sh", "-c", WEB_SERVER], labels={"app": "web"}, grace_seconds=0
        )
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        backends.append(f"web-{i}")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(web_service()))
    cluster.kubectl("wait", "--for=condition=Ready", *[f"pod/{b}" for b in backends],
                    "--timeout=120s")  # fmt: skip
    cluster.kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns",
                    "--timeout=120s")  # fmt: skip
    show(cluster, "-n", "kube-system", "get", "pods,services", "-l", "k8s-app=kube-dns",
         "-o", "wide")  # fmt: skip
    show(cluster, "get", "service,endpointslices", "-l", "kubernetes.io/service-name=web")
    show(cluster, "get", "service", "web")
    lookup = "cat /etc/resolv.conf; nslookup web.default.svc.cluster.local"
    print(f"$ kubectl exec demo-a -- sh -c '{lookup}'")
    print(cluster.kubectl("exec", "demo-a", "--", "sh", "-c", lookup).stdout.rstrip())
    # busybox-static's wget crashes in glibc's static NSS: resolve with nslookup (its own
    # resolver), then an HTTP request with nc to the address CoreDNS gave.
    fetch = (
        "ip=$(nslookup web.default.svc.cluster.local | awk '/^Address: /{a=$2} END{print a}'); "
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 "$ip" 80 | tail -n 1'
    )
    seen: set[str] = set()

    def both_answered() -> bool:
        answer = cluster.kubectl("exec", "demo-a", "--", "sh", "-c", fetch).stdout.strip()
        print(f"$ kubectl exec demo-a -- sh -c '{fetch}'\n{answer}", flush=True)
        seen.add(answer)
        return set(backends) <= seen

    wait_for(both_answered, f"answers from {backends} through Service web", 60, interval=0.2)


def demo(name: str) -> int:
    started = time.monotonic()
    say(f"1/7 Starting a local Kubernetes cluster {name!r} with two real nodes (no Docker)")
    print(
        "    etcd, kube-apiserver, controller-manager (node CIDRs from 10.244.0.0/16), scheduler;\n"
        "    each node: containerd + kubelet + kube-proxy in its own network and mount namespace.",
        flush=True,
    )
    if down_by_name(name):
        print(f"    (removed a previous {name!r} cluster first)", flush=True)
    cluster = up(name, Tier.REAL_NODE, fake_nodes=0, real_nodes=2)
    print(f"    up in {cluster.state.timings.get('total_up_s')}s", flush=True)
    show(cluster, "get", "nodes", "-o", "wide")
    print('    The nodes are NotReady: no CNI config yet ("cni plugin not initialized").')

    say("2/7 The images, built here and imported into each node's containerd")
    print("$ make images   # buildah, images/Dockerfile (cached when nothing changed)")
    built = build_and_load(cluster)
    for image in built.values():
        print(f"    {image.ref}  {image.id[:12]}  {image.size}", flush=True)

    say("3/7 helm install cniwarden (charts/cniwarden) with the example CNINetwork")
    nodes = [LocalNode.of(cluster, n.name) for n in cluster.real_nodes]
    product = ChartInstall(
        cluster,
        cluster.workdir / "cniwarden",
        nodes,
        namespace=NAMESPACE,
        release=RELEASE,
    )
    values = product.local_values()
    values["exampleNetwork"]["name"] = NETWORK
    print(f"$ helm install {RELEASE} charts/cniwarden -n {NAMESPACE} --create-namespace \\")
    print(f"    --set-json exampleNetwork='{json.dumps(values['exampleNetwork'])}' \\")
    print("    --set image.pullPolicy=Never --wait")
    notes = product.install(values)
    print(notes.rstrip(), flush=True)
    show(cluster, "-n", NAMESPACE, "get", "deployments,daemonsets")
    show(cluster, "-n", NAMESPACE, "get", "pods", "-o", "wide")

    say("4/7 The agent pods write the CNI config and install the plugins; the nodes become Ready")
    for node in nodes:
        wait_for(
            functools.partial(node_ready, cluster.kubectl, node.name), f"{node.name} Ready", 120
        )
    wait_for(lambda: network_ready(cluster), "CNINetwork pods Ready", 90)
    show(cluster, "get", "nodes")
    for node in nodes:
        files = ", ".join(node.listdir("/etc/cni/net.d"))
        ours = ", ".join(f for f in node.listdir("/opt/cni/bin") if f.startswith("cniwarden-"))
        print(f"    {node.name}: /etc/cni/net.d: {files}; /opt/cni/bin: {ours} (static shims)")

    say("5/7 Two pods, one per node")
    a, b = nodes
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod("demo-a", a.name, "exec sleep 3600")))
    # demo-b answers with its name and the connection as it sees it (no NAT between pods).
    reply = "echo hello from $(hostname), I see:; netstat -tn | grep ':8080 '"
    server = f'exec nc -ll -p 8080 -e sh -c "{reply}"'
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod("demo-b", b.name, server)))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/demo-a", "pod/demo-b", "--timeout=120s")
    show(cluster, "get", "pods", "-o", "wide")

    print("    They talk across nodes (host-gw: each node routes the other's pod CIDR):")
    ip_b = cluster.kubectl("get", "pod", "demo-b", "-o", "jsonpath={.status.podIP}").stdout
    for command in (f"ping -c 3 {ip_b}", f"echo hi | nc -w 5 {ip_b} 8080"):
        print(f"$ kubectl exec demo-a -- sh -c '{command}'")
        print(cluster.kubectl("exec", "demo-a", "--", "sh", "-c", command).stdout.rstrip())
    for node in nodes:
        print(f"$ ip route   # in {node.name}'s network namespace")
        print(node.sh("ip route | grep -v linkdown").rstrip())

    say("6/7 A Service by name: CoreDNS answers, kube-proxy balances across both nodes")
    show_service(cluster, nodes)

    say("7/7 What a user looks at")
    show(cluster, "get", "cninetworks")
    show(cluster, "get", "cninodestates")
    state = json.loads(cluster.kubectl("get", "cninodestate", a.name, "-o", "json").stdout)
    status = state.get("status") or {}
    summary = {
        "runtimes": status.get("runtimes"),
        "managedFiles": status.get("managedFiles"),
        "attachments": status.get("attachments"),
        "podRoutes": status.get("podRoutes"),
    }
    print(f"$ kubectl get cninodestate {a.name} -o json   # (excerpt)")
    print(json.dumps(summary, indent=2))

    print(f"\nDone in {time.monotonic() - started:.0f}s. The cluster and cniwarden keep running:")
    print(f"  export KUBECONFIG={cluster.kubeconfig}")
    print("  kubectl get cninetworks,cninodestates")
    print("  make demo-down        # helm uninstall (nodes cleaned), then the cluster goes")
    return 0


def demo_down(name: str) -> int:
    try:
        cluster = attach(name)
    except ClusterError:
        print(f"no demo cluster {name!r} is running")
        return 0
    if (cluster.workdir / "cniwarden" / "install.json").exists():
        say("helm uninstall: every CNINetwork is deleted and the nodes are cleaned first")
        cluster.kubectl("delete", "service", "web", "--ignore-not-found")
        cluster.kubectl(
            "delete", "pod", "demo-a", "demo-b", "web-0", "web-1", "--ignore-not-found",
            "--wait=true",
        )  # fmt: skip
        product = ChartInstall.attach(cluster, cluster.workdir / "cniwarden")
        print(product.uninstall())
        print(f"    the pre-delete hook Job's pod said:\n{product.hook.log.rstrip()}")
    say(f"stopping the local cluster {name!r}")
    down_by_name(name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.ship.demo", description=__doc__)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--down", action="store_true", help="uninstall and stop the demo cluster")
    args = parser.parse_args(argv)
    return demo_down(args.name) if args.down else demo(args.name)


if __name__ == "__main__":
    sys.exit(main())
