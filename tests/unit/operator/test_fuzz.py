"""Fuzzing (hypothesis) of what the operator parses from the outside: the files in
net.d (the runtime model of runtime_order) and CNINetwork specs (parse_spec, then
rendering, the switch gate and the source policy). The property: every input gets
an answer or a SpecError, never another exception.

CI runs a fixed budget (300 examples per property, derandomized so a run is
repeatable); `make fuzz` sets CNIWARDEN_FUZZ_EXAMPLES (20000 each) with fresh
randomness, like every target marked `fuzz`. Each test asserts the examples it
actually ran, so a budget that silently shrank would fail.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from cni_operator.api import BinarySourcePolicy, NetworkSpec, SpecError, parse_spec
from cni_operator.journal import parse_lines
from cni_operator.rendering import NodeFacts, check_against_binaries, render
from cni_operator.runtime_order import IGNORE_BINARIES, analyze, parse_config, sort_key
from cni_operator.switch_gate import classify, go_view
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.fuzz

FRESH = bool(os.environ.get("CNIWARDEN_FUZZ_EXAMPLES"))
EXAMPLES = int(os.environ.get("CNIWARDEN_FUZZ_EXAMPLES") or "300")
BUDGET = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not FRESH,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RAN: dict[str, int] = {}

# ------------------------------------------------------------------ values
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["usePodCIDR", "10.0.0.0/24", "fd00::/64", "1.0.0", "1.1.0", "0.3.1"]),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
KEYS = [
    "type", "ipam", "IPAM", "Type", "ranges", "Ranges", "subnet", "SubNet", "rangeStart",
    "rangeEnd", "gateway", "dataDir", "bridge", "Bridge", "ipMasq", "mtu", "routes", "name",
    "cniVersion", "plugins", "capabilities",
]  # fmt: skip
cni_keys = st.sampled_from(KEYS) | st.text(max_size=10)


def cni_object(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    values: st.SearchStrategy[Any] = json_values
    if depth:
        values = (
            values
            | cni_object(depth - 1)
            | st.lists(st.lists(cni_object(depth - 1), max_size=3), max_size=3)
        )
    return st.dictionaries(cni_keys, values, max_size=8)


subnets = st.sampled_from(["usePodCIDR", "10.1.0.0/24", "fd00::/64", "10.1.0.0", "x"]) | scalars
one_range = st.fixed_dictionaries(
    {},
    optional={
        "subnet": subnets,
        "gateway": st.sampled_from(["10.1.0.1", "x"]) | scalars,
        "rangeStart": st.sampled_from(["10.1.0.10", "fd00::5"]) | scalars,
        "rangeEnd": scalars,
    },
)
# Shaped like host-local's config most of the time, and anything else some of the time.
ipams = (
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["host-local", "static"]) | scalars,
            "subnet": subnets,
            "ranges": st.lists(
                st.lists(one_range | json_values, max_size=3) | json_values, max_size=3
            )
            | json_values,
            "rangeStart": scalars,
            "gateway": scalars,
            "dataDir": st.sampled_from(["/run/x", "rel"]) | scalars,
            "routes": json_values,
        },
    )
    | cni_object()
    | json_values
)
plugins = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["bridge", "host-local", "x", "", "a/b"]) | st.text(max_size=8)},
        optional={"ipam": ipams, "bridge": json_values},
    ).flatmap(lambda d: cni_object(1).map(lambda extra: {**extra, **d})),
    max_size=4,
)
REQUIRED: dict[str, st.SearchStrategy[Any]] = {
    "priority": st.integers(0, 99),
    "plugins": plugins.filter(bool),
}
specs_shaped = st.fixed_dictionaries(
    REQUIRED,
    optional={
        "cniVersion": st.sampled_from(["1.0.0", "1.1.0", "0.3.1", "0.4.0"]),
        "networkName": st.sampled_from(["pods", "Pods.v2", "a_b"]),
        "nodeSelector": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        "shadowPolicy": st.sampled_from(["Report", "Quarantine"]),
        "binaries": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["bridge", "host-local", "x"]),
                    "sha256": st.just("a" * 64),
                    "source": st.sampled_from(
                        [
                            {"url": "https://h.example/x/b"},
                            {"url": "https://h.example/x/../b"},
                            {"url": "http://user@h.example/x/b"},
                            {"file": "/opt/b"},
                        ]
                    ),
                }
            ),
            max_size=2,
            unique_by=lambda b: str(b["name"]),
        ),
        "routing": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["None", "HostGateway"]),
                "ipMasq": st.booleans(),
                "clusterCIDRs": st.lists(st.sampled_from(["10.0.0.0/8", "fd00::/8"]), max_size=2),
            },
        ),
        "disableCheck": st.booleans(),
        "disableGC": st.booleans(),
    },
)
# Shaped like a spec the CRD lets through (so the later stages run), or junk anywhere.
junk_specs = st.dictionaries(
    st.sampled_from(["priority", "plugins", "cniVersion", "routing", "binaries", "x"]),
    json_values,
)
specs = specs_shaped | junk_specs
pod_cidrs = st.lists(
    st.sampled_from(["10.244.1.0/24", "fd00:1::/64", "10.9.0.0/16", "bogus", ""]), max_size=3
)


def count(name: str) -> None:
    RAN[name] = RAN.get(name, 0) + 1


# ------------------------------------------------------------ net.d files
config_names = st.builds(
    lambda stem, suffix: stem + suffix,
    st.text(max_size=8),
    st.sampled_from([".conf", ".conflist", ".json", ".txt", ""]),
)
contents = st.one_of(
    st.none(),
    st.binary(max_size=200),
    cni_object().map(lambda d: json.dumps(d).encode()),
    st.builds(
        lambda doc, cut: json.dumps(doc).encode()[:cut],
        cni_object(),
        st.integers(0, 200),
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
)
versions = st.one_of(
    st.just(IGNORE_BINARIES),
    st.dictionaries(
        st.sampled_from(["bridge", "host-local", "x", "loopback"]),
        st.none() | st.lists(st.sampled_from(["0.3.1", "1.0.0", "1.1.0"]), max_size=3),
    ),
)


@BUDGET
@given(
    files=st.lists(st.tuples(config_names, contents), max_size=6),
    ours=st.lists(config_names, max_size=3),
    binaries=versions,
)
def test_the_runtime_model_answers_every_directory(
    files: list[tuple[str, bytes | None]], ours: list[str], binaries: Any
) -> None:
    count("runtime_order")
    analysis = analyze(files, ours, binaries)
    names = {name for name, _ in files}
    assert set(analysis.shadowing_files) <= names
    assert set(analysis.ours_order) <= set(ours)
    assert analysis.ours_order == sorted(analysis.ours_order, key=sort_key)
    for view in (analysis.containerd, analysis.crio):
        assert view.file is None or view.file in names
    for name, data in files:
        parsed = parse_config(name, data)
        assert parsed.valid or parsed.error


journal_like = st.fixed_dictionaries(
    {},
    optional={
        key: st.sampled_from(["quarantine", "moving", "/etc/cni/net.d/a.conf"]) | scalars
        for key in ("op", "original", "stored", "sha256", "time", "network")
    }
    | {"meta": st.dictionaries(st.sampled_from(["kind", "mode", "uid", "target"]), scalars)},
)


@BUDGET
@given(lines=st.lists(st.text(max_size=80) | journal_like.map(json.dumps), max_size=6))
def test_the_journal_reader_answers_every_file(lines: list[str]) -> None:
    count("journal")
    read = parse_lines(line + "\n" for line in lines)
    assert len(read.entries) + len(read.corrupt) <= len(lines)


# ------------------------------------------------------------ CNINetwork specs
@BUDGET
@given(raw=specs, cidrs=pod_cidrs, other=specs)
def test_a_spec_parses_renders_and_compares_or_says_why(
    raw: dict[str, Any], cidrs: list[str], other: dict[str, Any]
) -> None:
    count("spec")
    try:
        spec = parse_spec(raw)
    except SpecError as error:
        assert str(error).startswith("spec.")
        return
    assert isinstance(spec, NetworkSpec)
    go_view(spec.plugins)
    BinarySourcePolicy(("https://h.example/x/",)).refusals(spec)
    try:
        rendered = render("net", spec, NodeFacts("n1", {}, tuple(cidrs)))
    except SpecError:
        pass
    else:
        check_against_binaries(rendered, {"bridge": ["1.0.0"], "x": None})
        json.loads(rendered.content)
    try:
        other_spec = parse_spec(other)
    except SpecError:
        return
    change = classify(spec, other_spec)
    assert set(change.unsafe) <= set(change.changed)
    assert classify(spec, spec).changed == []


def test_the_budget_was_spent() -> None:
    """Runs after the properties (file order): each ran at least its budget (more
    when a failure was being shrunk)."""
    assert set(RAN) == {"runtime_order", "journal", "spec"}, RAN
    assert min(RAN.values()) >= EXAMPLES, RAN
