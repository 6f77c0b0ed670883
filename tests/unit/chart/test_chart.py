"""The Helm chart, offline: lint, rendering, schema, CRDs, RBAC, workloads, images.

The e2e installs the same chart into a real API server and runs the rendered
commands; these tests pin the properties a reviewer would check by eye.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from cni_operator.api import parse_spec
from cni_operator.rendering import NodeFacts, render

from tests.chartlib import CHART, ROOT, container, find, helm, set_args
from tests.chartlib import render as render_chart

EXAMPLE_ON = {"exampleNetwork": {"enabled": True}}


@pytest.mark.parametrize(
    "values",
    [
        {},
        EXAMPLE_ON,
        {"agent": {"cniServer": {"enabled": False}}, "uninstall": {"deleteNetworks": False}},
        {"controller": {"hostNetwork": False}, "image": {"tag": "dev", "pullPolicy": "Never"}},
    ],
    ids=["defaults", "example-network", "no-server-no-hook", "pod-network-controller"],
)
def test_helm_lint_strict(values: dict[str, Any]) -> None:
    out = helm("lint", "--strict", str(CHART), *set_args(values), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_chart_crds_are_the_repository_crds_byte_for_byte() -> None:
    repo = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert repo, "no CRDs in crds/"
    assert chart == repo, "charts/cniwarden/crds/ differs from crds/: cp crds/*.yaml there"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"imgae": {"tag": "x"}}, "additional properties 'imgae' not allowed"),
        ({"image": {"pullpolicy": "Never"}}, "'pullpolicy' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"controller": {"replicas": 2}}, "'replicas' not allowed"),
        ({"controller": {"healthPort": 70000}}, "healthPort"),
        ({"agent": {"helthPort": 1}}, "'helthPort' not allowed"),
        ({"agent": {"hostPaths": {"cniConfDir": "etc/cni"}}}, "cniConfDir"),
        ({"agent": {"hostPaths": {"cniConfdir": "/etc/cni"}}}, "'cniConfdir' not allowed"),
        ({"agent": {"cniServer": {"worker": 2}}}, "'worker' not allowed"),
        ({"agent": {"tolerations": [{"operater": "Exists"}]}}, "'operater' not allowed"),
        ({"agent": {"resources": {"limit": {"memory": "1Gi"}}}}, "'limit' not allowed"),
        ({"exampleNetwork": {"enable": True}}, "'enable' not allowed"),
        ({"exampleNetwork": {"routing": "hostgw"}}, "routing"),
        ({"exampleNetwork": {"clusterCIDRs": ["10.244.0.0"]}}, "clusterCIDRs"),
        ({"exampleNetwork": {"priority": 100}}, "priority"),
        ({"uninstall": {"timeout": 10}}, "'timeout' not allowed"),
    ],
)
def test_schema_rejects_typos_and_bad_values(values: dict[str, Any], complaint: str) -> None:
    out = helm("template", "t", str(CHART), *set_args(values), check=False)
    assert out.returncode != 0, f"accepted {values}"
    assert "don't meet the specifications of the schema" in out.stderr
    assert complaint in out.stderr, out.stderr


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], data: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or '/'} accepts unknown keys"
        for key, value in data.items():
            assert key in node["properties"], f"{path}/{key} is not in the schema"
            child = node["properties"][key]
            if "$ref" in child:
                child = schema["definitions"][child["$ref"].rsplit("/", 1)[1]]
            if isinstance(value, dict) and child.get("type") == "object" and "properties" in child:
                walk(child, value, f"{path}/{key}")

    walk(schema, values, "")


# ---------------------------------------------------------------- RBAC
def rules(objects: list[dict[str, Any]], name_suffix: str) -> set[tuple[str, str, str]]:
    role = find(objects, "ClusterRole", name_suffix)
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def grants(*entries: tuple[str, str, list[str]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for g, r, verbs in entries for v in verbs}


def test_rbac_has_no_wildcards_no_cluster_admin_no_secrets() -> None:
    objects = render_chart(EXAMPLE_ON)
    for obj in objects:
        if obj["kind"] in ("ClusterRole", "Role"):
            for rule in obj["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{obj['metadata']['name']}: wildcard {field}"
                assert "secrets" not in rule["resources"]
                assert "pods" not in rule["resources"]
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        if obj["kind"] in ("ClusterRoleBinding", "RoleBinding"):
            assert obj["roleRef"]["name"] not in ("cluster-admin", "admin", "edit")
            rendered_roles = {
                o["metadata"]["name"] for o in objects if o["kind"] in ("ClusterRole", "Role")
            }
            assert obj["roleRef"]["name"] in rendered_roles


def test_controller_rbac_is_exactly_what_it_calls() -> None:
    # kopf watches CNINetworks and patches finalizers/annotations; Kube.patch_network_status;
    # kopf watches Nodes and CNINodeStates (controller.build_registry); the Node
    # projection: Kube.list_nodes_with_version, get_node_routes, write_node_routes.
    assert rules(render_chart(), "-controller") == grants(
        ("cniwarden.io", "cninetworks", ["list", "watch", "patch"]),
        ("cniwarden.io", "cninetworks/status", ["patch"]),
        ("cniwarden.io", "cninodestates", ["list", "watch"]),
        ("cniwarden.io", "cninoderoutes", ["get", "create", "patch"]),
        ("", "nodes", ["list", "watch"]),
    )


def test_migration_rbac_is_off_by_default_and_exactly_what_it_calls_when_on() -> None:
    assert not any(o["metadata"]["name"].endswith("-migration") for o in render_chart())
    off = find(render_chart(), "Deployment", "-controller")
    assert "--migrations" not in container(off, "controller")["args"]
    on = render_chart({"controller": {"migrations": {"enabled": True}}})
    assert "--migrations" in container(find(on, "Deployment", "-controller"), "controller")["args"]
    # kopf's timer on CNIMigrations; Kube.patch_migration_status, get_network,
    # get_node_state, get_node, set_node_unschedulable, set_node_label, list_pods,
    # evict_pod (the Eviction API: never a pod delete); list_nodes and
    # set_network_annotations (the switch acknowledgement) use the controller's role.
    assert rules(on, "-controller-migration") == grants(
        ("cniwarden.io", "cnimigrations", ["list", "watch", "patch"]),
        ("cniwarden.io", "cnimigrations/status", ["patch"]),
        ("cniwarden.io", "cninetworks", ["get"]),
        ("cniwarden.io", "cninodestates", ["get"]),
        ("", "nodes", ["get", "patch"]),
        ("", "pods", ["list"]),
        ("", "pods/eviction", ["create"]),
    )
    binding = find(on, "ClusterRoleBinding", "-controller-migration")
    assert binding["subjects"][0]["name"] == "cniwarden-controller"
    # Verify's probe pods (Kube.get_pod, create_pod, delete_pod, pod_log): a Role in
    # the probe namespace only, never a cluster-wide pod delete.
    probe = find(on, "Role", "-controller-migration-probe")
    assert probe["metadata"]["namespace"] == "default"
    assert {
        (g, r, v)
        for rule in probe["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    } == grants(("", "pods", ["get", "create", "delete"]), ("", "pods/log", ["get"]))
    probe_binding = find(on, "RoleBinding", "-controller-migration-probe")
    assert probe_binding["roleRef"]["name"] == probe["metadata"]["name"]


def test_agent_rbac_is_exactly_what_it_calls() -> None:
    # kopf on.event CNINetworks (read only) and CNINodeRoutes (host-gw's peers);
    # Kube.get_node_routes; its own Node: Kube.get_node and Kube.watch_node (a watch
    # field-selected on its name: no list of every Node);
    # Kube.ensure_node_state (get, create);
    # Kube.patch_node_state_status.
    assert rules(render_chart(), "-agent") == grants(
        ("cniwarden.io", "cninetworks", ["list", "watch"]),
        ("cniwarden.io", "cninodestates", ["get", "create"]),
        ("cniwarden.io", "cninodestates/status", ["patch"]),
        ("cniwarden.io", "cninoderoutes", ["get", "list", "watch"]),
        ("", "nodes", ["get", "watch"]),
    )


def test_events_are_created_only_where_they_go() -> None:
    objects = render_chart(namespace="cw-system")
    role = find(objects, "Role", "cniwarden-events")
    assert role["metadata"]["namespace"] == "default"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    binding = find(objects, "RoleBinding", "cniwarden-events")
    assert {s["name"] for s in binding["subjects"]} == {
        "cniwarden-controller",
        "cniwarden-agent",
    }
    # kopf posts its own Events about cluster-scoped objects in the controller's namespace.
    own = find(objects, "Role", "controller-events")
    assert own["metadata"]["namespace"] == "cw-system"
    assert own["rules"] == role["rules"]
    assert find(objects, "RoleBinding", "controller-events")["subjects"][0]["name"] == (
        "cniwarden-controller"
    )


def test_uninstall_hook_may_only_list_and_delete_networks() -> None:
    objects = render_chart()
    assert rules(objects, "-uninstall") == grants(
        ("cniwarden.io", "cninetworks", ["list", "delete"])
    )
    job = find(objects, "Job", "-uninstall")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    main = container(job, "uninstall")
    assert main["command"] == ["python", "-m", "cni_operator.teardown", "networks"]
    hooks = [o for o in objects if "helm.sh/hook" in o["metadata"].get("annotations", {})]
    assert {o["kind"] for o in hooks} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
    }
    assert not any("-uninstall" in o["metadata"]["name"] for o in render_chart(hooks=False)), (
        "the hook objects must all be hooks"
    )


# ---------------------------------------------------------- workloads
def test_controller_is_one_recreated_replica_with_probes() -> None:
    deployment = find(render_chart(), "Deployment", "-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    main = container(deployment, "controller")
    assert main["command"] == ["cniwarden", "operator"]
    port = main["ports"][0]["containerPort"]
    assert f"--liveness=http://$(POD_IP):{port}/healthz" in main["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ctx = main["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"]
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not ctx["allowPrivilegeEscalation"]


def test_agent_daemonset_runs_everywhere_with_only_the_host_paths_it_needs() -> None:
    daemonset = find(render_chart(), "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {
        "cni-conf": "/etc/cni/net.d",
        "cni-bin": "/opt/cni/bin",
        "cni-state": "/var/lib/cni",
        "cni-run": "/run/cniwarden",
        "cniwarden-state": "/var/lib/cniwarden",
        "netns": "/run/netns",
        "xtables-lock": "/run/xtables.lock",
        "runtime-socket-0": "/run/containerd",
        "runtime-socket-1": "/run/crio",
    }
    agent = container(daemonset, "agent")
    assert agent["command"] == ["cniwarden", "agent"]
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["CNIWARDEN_OWN_BIN_DIR"]["value"] == "/usr/lib/cniwarden/cni-bin"
    assert {m["mountPath"] for m in agent["volumeMounts"]} == {
        "/etc/cni/net.d",
        "/opt/cni/bin",
        "/var/lib/cni",
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/run/containerd",
        "/run/crio",
    }
    sockets = [m for m in agent["volumeMounts"] if m["name"].startswith("runtime-socket-")]
    assert all(m["readOnly"] for m in sockets), "the agent only asks the runtime"
    ctx = agent["securityContext"]
    assert ctx["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert not ctx.get("privileged") and ctx["readOnlyRootFilesystem"]
    port = agent["ports"][0]["containerPort"]
    assert f"--liveness=http://$(POD_IP):{port}/healthz" in agent["args"]
    server = container(daemonset, "cni-server")
    assert server["command"] == ["cniwarden", "cni-server"]
    assert "--socket=/run/cniwarden/cni.sock" in server["args"]
    assert server["livenessProbe"]["exec"]["command"][:3] == [
        "python",
        "-m",
        "cni_operator.healthcheck",
    ]


def test_pre_stop_hooks_never_remove_the_nodes_config() -> None:
    daemonset = find(render_chart(), "DaemonSet", "-agent")
    hooks = {
        c["name"]: c["lifecycle"]["preStop"]["exec"]["command"]
        for c in daemonset["spec"]["template"]["spec"]["containers"]
        if "lifecycle" in c
    }
    assert hooks == {"cni-server": ["sleep", "2"]}
    for command in hooks.values():
        text = " ".join(command)
        assert not re.search(r"\brm\b|net\.d|/opt/cni|uninstall|teardown", text), text


def test_host_paths_follow_the_runtime_but_mount_at_the_standard_paths() -> None:
    k3s = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
    values = {
        "agent": {
            "hostPaths": {"cniConfDir": k3s, "cniBinDir": "/bin/cni", "cniStateDir": "/var/lib/cni"}
        }
    }
    daemonset = find(render_chart(values), "DaemonSet", "-agent")
    volumes = {
        v["name"]: v["hostPath"]["path"]
        for v in daemonset["spec"]["template"]["spec"]["volumes"]
        if "hostPath" in v
    }
    assert volumes["cni-conf"] == k3s and volumes["cni-bin"] == "/bin/cni"
    mounts = {m["name"]: m["mountPath"] for m in container(daemonset, "agent")["volumeMounts"]}
    assert mounts["cni-conf"] == "/etc/cni/net.d"


def test_server_can_be_switched_off() -> None:
    daemonset = find(render_chart({"agent": {"cniServer": {"enabled": False}}}), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent"]
    assert {v["name"] for v in pod["volumes"]} == {
        "api-token",
        "cni-conf",
        "cni-bin",
        "cni-state",
        "runtime-socket-0",
        "runtime-socket-1",
    }


def test_images_come_from_values() -> None:
    objects = render_chart({"image": {"registry": "localhost:5000/x/", "tag": "dev"}})
    images = {
        c["image"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet", "Job")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        "localhost:5000/x/cniwarden-controller:dev",
        "localhost:5000/x/cniwarden-agent:dev",
    }
    default = find(render_chart(), "Deployment", "-controller")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(default, "controller")["image"].endswith(f":{chart['appVersion']}")


# ------------------------------------------------------ example network
def test_example_network_is_off_by_default_and_valid_when_on() -> None:
    assert not [o for o in render_chart() if o["kind"] == "CNINetwork"]
    network = find(render_chart(EXAMPLE_ON), "CNINetwork")
    spec = parse_spec(network["spec"])
    assert spec.routing is not None and spec.routing.mode == "HostGateway"
    assert spec.routing.ipMasq is True
    node = NodeFacts("n1", {}, ("10.244.1.0/24",))
    conflist = render(network["metadata"]["name"], spec, node).conflist
    bridge = conflist["plugins"][0]
    assert bridge["type"] == "cniwarden-bridge"
    assert bridge["ipam"]["type"] == "cniwarden-host-local"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert "ipMasq" not in bridge, "the bridge's own ipMasq would NAT pod-to-pod traffic"


def test_example_network_values_reach_the_spec() -> None:
    values = {
        "exampleNetwork": {
            "enabled": True,
            "name": "demo",
            "bridge": "cwd0",
            "podRoutes": ["10.244.0.0/16"],
            "clusterCIDRs": ["10.244.0.0/16"],
            "nodeSelector": {"cniwarden.io/demo": "yes"},
            "shadowPolicy": "Quarantine",
        }
    }
    network = find(render_chart(values), "CNINetwork")
    assert network["metadata"]["name"] == "demo"
    spec = network["spec"]
    assert spec["nodeSelector"] == {"cniwarden.io/demo": "yes"}
    assert spec["shadowPolicy"] == "Quarantine"
    assert spec["routing"]["clusterCIDRs"] == ["10.244.0.0/16"]
    assert spec["plugins"][0]["bridge"] == "cwd0"
    assert spec["plugins"][0]["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}]


def test_example_network_chains_portmap_from_the_agent_image() -> None:
    """hostPort out of the box: portmap with the portMappings capability, declared as a
    binary whose sha256 is the one the image build checks (images/cni-plugins.sha256),
    under a name of ours so a node's own portmap is neither replaced nor a conflict."""
    network = find(render_chart(EXAMPLE_ON), "CNINetwork")
    spec = parse_spec(network["spec"])
    conflist = render("pods", spec, NodeFacts("n1", {}, ("10.244.1.0/24",))).conflist
    assert conflist["plugins"][-1] == {
        "type": "cniwarden-portmap",
        "capabilities": {"portMappings": True},
    }
    sums = (ROOT / "images" / "cni-plugins.sha256").read_text().splitlines()
    pinned = {name: digest for digest, name in (line.split() for line in sums)}
    (declared,) = spec.binaries
    assert (declared.name, declared.sha256) == ("cniwarden-portmap", pinned["portmap"])
    assert declared.source.file == "/usr/lib/cniwarden/cni-plugins/portmap"
    dockerfile = (ROOT / "images" / "Dockerfile").read_text()
    assert "COPY --from=cni-plugins /out/ /usr/lib/cniwarden/cni-plugins/" in dockerfile
    assert "sha256sum -c SHA256SUMS" in dockerfile

    node_provided = {"exampleNetwork": {"enabled": True, "portmap": {"install": False}}}
    spec = parse_spec(find(render_chart(node_provided), "CNINetwork")["spec"])
    assert not spec.binaries
    assert spec.plugins[-1]["type"] == "portmap"
    off = {"exampleNetwork": {"enabled": True, "portmap": {"enabled": False}}}
    spec = parse_spec(find(render_chart(off), "CNINetwork")["spec"])
    assert not spec.binaries and [p["type"] for p in spec.plugins] == ["cniwarden-bridge"]


# --------------------------------------------------------------- images
def test_one_dockerfile_builds_both_images_from_a_pinned_base() -> None:
    text = (ROOT / "images" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.MULTILINE)
    names = {name for _, name in stages}
    assert {"controller", "agent"} <= names, "one target per image"
    for base, _ in stages:
        ref = args.get(base.strip("${}"), base)
        if ref in names | {"scratch"}:
            continue
        _, _, tag = ref.partition(":")
        assert re.search(r"\d+\.\d+", tag), f"{ref}: pin a versioned tag, never latest"
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
    controller = text[text.index("AS controller") : text.index("AS agent")]
    agent = text[text.index("AS agent") :]
    assert re.search(r"^USER 65532:65532$", controller, re.MULTILINE), "non-root"
    assert "/usr/lib/cniwarden/cni-bin" in agent
    assert "CNIWARDEN_OWN_BIN_DIR=/usr/lib/cniwarden/cni-bin" in agent
    assert "make plugins" in text


def test_the_images_entry_points_are_in_the_package() -> None:
    """What the chart runs inside the images: console script and modules."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cniwarden = "cni_operator.cli:main"' in pyproject
    for module in ("teardown", "healthcheck", "cli", "hostgw", "hostgw_node"):
        assert (ROOT / "operator" / "cni_operator" / f"{module}.py").exists()


def test_kind_config_disables_the_default_cni_and_has_two_workers() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["networking"]["disableDefaultCNI"] is True
    assert config["networking"]["podSubnet"] == "10.244.0.0/16"
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]


def test_chart_directory_has_no_stray_files() -> None:
    expected = {
        "Chart.yaml",
        "README.md",
        "values.yaml",
        "values.schema.json",
        ".helmignore",
        "crds",
        "dashboards",
        "templates",
    }
    assert {p.name for p in CHART.iterdir()} == expected
    assert all(p.suffix in (".yaml", ".tpl", ".txt") for p in (CHART / "templates").iterdir())


def test_agents_may_write_only_their_own_nodes_report() -> None:
    objects = render_chart(namespace="cw-system")
    policy = find(objects, "ValidatingAdmissionPolicy", "-own-node-state")
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules[0]["resources"] == ["cninodestates", "cninodestates/status"]
    assert set(rules[0]["operations"]) == {"CREATE", "UPDATE"}
    (condition,) = policy["spec"]["matchConditions"]
    assert "'system:serviceaccount:cw-system:cniwarden-agent'" in condition["expression"]
    (validation,) = policy["spec"]["validations"]
    assert "authentication.kubernetes.io/node-name" in validation["expression"]
    assert "object.metadata.name" in validation["expression"]
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "-own-node-state")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    off = render_chart({"agent": {"ownNodeStateOnly": False}})
    assert not [
        o
        for o in off
        if o["kind"].startswith("ValidatingAdmissionPolicy")
        and o["metadata"]["name"].endswith("-own-node-state")
    ]


def test_canonical_keys_policy_lists_what_the_agent_refuses() -> None:
    """The admission policy and the agent's parser refuse the same spellings."""
    from cni_operator import api  # noqa: PLC0415

    objects = render_chart()
    policy = find(objects, "ValidatingAdmissionPolicy", "-canonical-keys")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    for name, keys in (
        ("pluginKeys", api.PLUGIN_KEYS),
        ("ipamKeys", api.IPAM_KEYS),
        ("rangeKeys", api.RANGE_KEYS),
    ):
        assert variables[name] == "[" + ", ".join(f"'{k}'" for k in keys) + "]"
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "-canonical-keys")
    assert binding["spec"]["validationActions"] == ["Deny"]
    off = render_chart({"cniNetworkAdmission": {"canonicalKeys": False}})
    assert not [o for o in off if o["metadata"]["name"].endswith("-canonical-keys")]


def test_binary_sources_reach_the_agent_and_the_controller() -> None:
    prefix = "https://github.com/containernetworking/plugins/releases/download/"
    values = {
        "binarySources": {"urlPrefixes": [prefix], "fetchTimeoutSeconds": 30, "maxBytes": 1000}
    }
    objects = render_chart(values)
    agent_args = container(find(objects, "DaemonSet"), "agent")["args"]
    assert "--binary-fetch-timeout=30" in agent_args
    assert "--binary-max-bytes=1000" in agent_args
    assert f"--binary-url-prefix={prefix}" in agent_args
    controller_args = container(find(objects, "Deployment"), "controller")["args"]
    assert f"--binary-url-prefix={prefix}" in controller_args
    defaults = container(find(render_chart(), "DaemonSet"), "agent")["args"]
    assert "--binary-max-bytes=268435456" in defaults
    assert not [a for a in defaults if a.startswith("--binary-url-prefix")]
    for bad in ("https://github.com/org", "ftp://h/x/", "https://h/x/?a=b/"):
        out = helm(
            "template",
            "t",
            str(CHART),
            *set_args({"binarySources": {"urlPrefixes": [bad]}}),
            check=False,
        )
        assert out.returncode != 0 and "urlPrefixes" in out.stderr, bad


# ---------------------------------------------------------- least privilege (issue 11)
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def test_only_the_agent_container_gets_an_api_token() -> None:
    """The privileged cni-server never calls the API server: no token in it."""
    daemonset = find(render_chart(), "DaemonSet", "-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    (token,) = [
        m for m in container(daemonset, "agent")["volumeMounts"] if m["mountPath"] == TOKEN_PATH
    ]
    assert token["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == token["name"])
    sources = volume["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
    assert sources[2]["downwardAPI"]["items"][0]["path"] == "namespace"
    for name in ("cni-server", *[c["name"] for c in pod.get("initContainers") or []]):
        spec = container(daemonset, name) if name == "cni-server" else pod["initContainers"][0]
        mounts = [m for m in spec.get("volumeMounts") or [] if m["name"] == token["name"]]
        assert not mounts, f"{name} mounts the API token"


def test_the_server_socket_directory_is_made_private_first() -> None:
    pod = find(render_chart(), "DaemonSet", "-agent")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-c", "import os; os.chmod('/run/cniwarden', 0o700)"]
    assert init["volumeMounts"] == [{"name": "cni-run", "mountPath": "/run/cniwarden"}]
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not init["securityContext"]["allowPrivilegeEscalation"]
    run_dir = next(v for v in pod["volumes"] if v["name"] == "cni-run")
    assert run_dir["hostPath"]["path"] == "/run/cniwarden"
    off = find(render_chart({"agent": {"cniServer": {"enabled": False}}}), "DaemonSet", "-agent")
    assert "initContainers" not in off["spec"]["template"]["spec"]


def test_creating_a_network_is_a_node_admin_role_of_its_own() -> None:
    objects = render_chart()
    admin = find(objects, "ClusterRole", "cniwarden-admin")
    assert admin["aggregationRule"]["clusterRoleSelectors"] == [
        {"matchLabels": {"cniwarden.io/aggregate-to-admin": "true"}}
    ]
    networks = find(objects, "ClusterRole", "cniwarden-admin-networks")
    assert networks["metadata"]["labels"]["cniwarden.io/aggregate-to-admin"] == "true"
    assert rules(objects, "cniwarden-admin-networks") >= grants(
        ("cniwarden.io", "cninetworks", ["create", "update", "patch", "delete"])
    )
    view = find(objects, "ClusterRole", "cniwarden-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for _, _, v in rules(objects, "cniwarden-view")} == {"get", "list", "watch"}
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        for builtin in ("admin", "edit"):
            assert f"rbac.authorization.k8s.io/aggregate-to-{builtin}" not in labels, obj
    readme = (CHART / "README.md").read_text()
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for text in (readme, notes):
        assert "node-admin" in text and "binarySources.urlPrefixes" in text


def test_metrics_ports_services_and_optional_service_monitors() -> None:
    objects = render_chart(namespace="cw-system")
    agent = find(objects, "DaemonSet")
    env = {e["name"]: e.get("value") for e in container(agent, "agent")["env"]}
    assert env["CNIWARDEN_METRICS_ADDRESS"] == "$(POD_IP):9812"
    server = container(agent, "cni-server")
    assert "--metrics-address=$(POD_IP):9813" in server["args"]
    assert {p["containerPort"] for p in server["ports"]} == {9813}
    controller = find(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in container(controller, "controller")["env"]}
    assert env["CNIWARDEN_METRICS_ADDRESS"] == "$(POD_IP):9814"
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    agent_service = services["cniwarden-agent-metrics"]
    assert agent_service["metadata"]["annotations"]["prometheus.io/port"] == "9812"
    assert {p["port"] for p in agent_service["spec"]["ports"]} == {9812, 9813}
    assert {p["port"] for p in services["cniwarden-controller-metrics"]["spec"]["ports"]} == {9814}
    assert not [o for o in objects if o["kind"] == "ServiceMonitor"]
    monitored = render_chart({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitors = [o for o in monitored if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    off = render_chart({"metrics": {"enabled": False}})
    assert not [o for o in off if o["kind"] == "Service"]
    assert "--metrics-address" not in " ".join(
        container(find(off, "DaemonSet"), "cni-server")["args"]
    )


def test_readiness_taint_grants_only_its_own_nodes_taint() -> None:
    off = render_chart()
    assert not [o for o in off if o["metadata"]["name"].endswith("-own-node-taint")]
    objects = render_chart({"agent": {"readinessTaint": {"enabled": True}}}, namespace="cw-system")
    env = {e["name"]: e.get("value") for e in container(find(objects, "DaemonSet"), "agent")["env"]}
    assert env["CNIWARDEN_READINESS_TAINT"] == "1"
    mounts = {
        m["mountPath"] for m in container(find(objects, "DaemonSet"), "agent")["volumeMounts"]
    }
    assert "/run/cniwarden" in mounts  # STATUS through the shim reaches the server
    assert env["CNIWARDEN_READINESS_PROBE_SECONDS"] == "0"  # the probe: opt-in
    assert "/run/netns" not in mounts
    agent = container(find(objects, "DaemonSet"), "agent")
    assert not agent["securityContext"].get("privileged")
    probing = render_chart(
        {"agent": {"readinessTaint": {"enabled": True, "probe": {"enabled": True}}}}
    )
    agent = container(find(probing, "DaemonSet"), "agent")
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["CNIWARDEN_READINESS_PROBE_SECONDS"] == "300"
    (netns,) = [m for m in agent["volumeMounts"] if m["mountPath"] == "/run/netns"]
    assert netns["mountPropagation"] == "Bidirectional"  # the cni-server sees the netns
    assert agent["securityContext"] == {"privileged": True}
    role = next(
        o
        for o in objects
        if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "cniwarden-agent"
    )
    assert {"resources": ["nodes"], "verbs": ["get", "patch"], "apiGroups": [""]} in role["rules"]
    policy = find(objects, "ValidatingAdmissionPolicy", "-own-node-taint")
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["nodes"]
    exprs = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "authentication.kubernetes.io/node-name" in exprs
    assert "variables.others == variables.oldOthers" in exprs
