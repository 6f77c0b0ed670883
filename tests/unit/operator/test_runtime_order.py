"""Which file each runtime uses, and the verdict for every foreign file."""

import json

from cni_operator.runtime_order import (
    IGNORE_BINARIES,
    DirAnalysis,
    FileVerdict,
    Verdict,
    analyze,
    effective_network,
    parse_config,
    sort_key,
)

V = {"bridge": ["0.3.1", "0.4.0", "1.0.0"], "host-local": ["0.3.1", "0.4.0", "1.0.0"]}


def conflist(name: str, version: str = "1.0.0", kind: str = "bridge") -> bytes:
    return json.dumps(
        {
            "cniVersion": version,
            "name": name,
            "plugins": [{"type": kind, "ipam": {"type": "host-local"}}],
        }
    ).encode()


OURS = ("10-ours.conflist", conflist("ours"))


def by_file(analysis: DirAnalysis) -> dict[str, FileVerdict]:
    return {v.file: v for v in analysis.foreign}


def test_bytewise_order() -> None:
    names = ["99-c.conf", "2-b.conf", "10-a.conf", "Z.conf", "a.json"]
    assert sorted(names, key=sort_key) == ["10-a.conf", "2-b.conf", "99-c.conf", "Z.conf", "a.json"]


def test_foreign_file_before_ours_wins_for_both_runtimes() -> None:
    analysis = analyze([OURS, ("00-podman.conflist", conflist("podman"))], ["10-ours.conflist"], V)
    assert analysis.containerd.file == "00-podman.conflist"
    assert not analysis.containerd.ours
    assert analysis.crio.file == "00-podman.conflist"
    verdict = by_file(analysis)["00-podman.conflist"]
    assert verdict.verdicts == (Verdict.WINS_OVER_OURS,)
    assert analysis.shadowing_files == ["00-podman.conflist"]


def test_json_suffix_counts_and_uppercase_sorts_first() -> None:
    files = [OURS, ("Z-upper.json", conflist("z")), ("zz.conf", b"{}")]
    analysis = analyze(files, ["10-ours.conflist"], V)
    assert analysis.containerd.file == "10-ours.conflist"  # "1" (0x31) < "Z" (0x5a)
    files.append(
        ("0-zero.json", json.dumps({"cniVersion": "1.0.0", "name": "j", "type": "bridge"}).encode())
    )
    assert analyze(files, ["10-ours.conflist"], V).containerd.file == "0-zero.json"


def test_files_after_ours_are_shadowed() -> None:
    analysis = analyze(
        [OURS, ("87-podman-bridge.conflist", conflist("podman"))], ["10-ours.conflist"], V
    )
    assert analysis.containerd.ours and analysis.containerd.healthy
    assert by_file(analysis)["87-podman-bridge.conflist"].verdicts == (Verdict.SHADOWED_BY_OURS,)
    assert analysis.shadowing_files == []


def test_truncated_json_before_ours_kills_containerd_but_crio_skips_it() -> None:
    truncated = conflist("broken")[:25]
    analysis = analyze([OURS, ("00-broken.conflist", truncated)], ["10-ours.conflist"], V)
    assert not analysis.containerd.healthy
    assert "NotReady" in analysis.containerd.message
    assert analysis.crio.file == "10-ours.conflist" and analysis.crio.healthy
    verdict = by_file(analysis)["00-broken.conflist"]
    assert verdict.verdicts == (Verdict.INVALID,)
    assert verdict.node_killer
    assert analysis.broken


def test_invalid_file_after_a_valid_one_is_latent() -> None:
    analysis = analyze([OURS, ("50-broken.conf", b"")], ["10-ours.conflist"], V)
    assert analysis.containerd.healthy
    verdict = by_file(analysis)["50-broken.conf"]
    assert not verdict.node_killer
    assert "unexpected end of JSON input" in verdict.detail


def test_conf_holding_a_conflist_is_invalid() -> None:
    parsed = parse_config("00-x.conf", conflist("x"))
    assert not parsed.valid
    assert "rename it to .conflist" in (parsed.error or "")


def test_missing_binary_winner_containerd_picks_it_crio_falls_through() -> None:
    analysis = analyze(
        [OURS, ("05-calico.conflist", conflist("calico", kind="calico"))], ["10-ours.conflist"], V
    )
    assert analysis.containerd.file == "05-calico.conflist" and not analysis.containerd.healthy
    assert analysis.crio.file == "10-ours.conflist"
    verdict = by_file(analysis)["05-calico.conflist"]
    assert verdict.verdicts == (Verdict.WINS_OVER_OURS, Verdict.MISSING_BINARY)


def test_incompatible_version() -> None:
    analysis = analyze(
        [OURS, ("20-new.conflist", conflist("new", version="1.1.0"))], ["10-ours.conflist"], V
    )
    verdict = by_file(analysis)["20-new.conflist"]
    assert verdict.verdicts == (Verdict.INCOMPATIBLE_VERSION, Verdict.SHADOWED_BY_OURS)


def test_without_ours_nothing_wins_over_ours() -> None:
    analysis = analyze([("10-a.conflist", conflist("a")), ("20-b.conflist", conflist("b"))], [], V)
    assert analysis.containerd.file == "10-a.conflist"
    assert all(v.verdicts == () for v in analysis.foreign)
    assert not analysis.broken


def test_empty_dir_is_broken() -> None:
    analysis = analyze([], [], V)
    assert analysis.broken
    assert analysis.containerd.file is None


def test_non_config_names_are_ignored() -> None:
    analysis = analyze(
        [OURS, (".00-x.conflist.1234.tmp", b"{"), ("00-x.conflist.bak", b"{")],
        ["10-ours.conflist"],
        V,
    )
    assert analysis.foreign == []
    assert analysis.containerd.ours


def test_ignoring_binaries_judges_order_and_syntax_only() -> None:
    """The reconciler's takeover and shadow questions: no bin dir is consulted, so no
    file is called MissingBinary on the way, and the order verdicts stay the same."""
    files = [OURS, ("00-podman.conflist", conflist("podman", kind="podman-bridge"))]
    with_bin_dir = analyze(files, ["10-ours.conflist"], V)
    assert by_file(with_bin_dir)["00-podman.conflist"].verdicts == (
        Verdict.WINS_OVER_OURS,
        Verdict.MISSING_BINARY,
    )
    ignoring = analyze(files, ["10-ours.conflist"], IGNORE_BINARIES)
    assert by_file(ignoring)["00-podman.conflist"].verdicts == (Verdict.WINS_OVER_OURS,)
    assert ignoring.shadowing_files == with_bin_dir.shadowing_files == ["00-podman.conflist"]
    assert ignoring.containerd.healthy and not with_bin_dir.containerd.healthy
    assert ignoring.containerd.network == with_bin_dir.containerd.network == "podman"
    # A missing binary makes containerd fail pods, not pick another file.
    assert effective_network(dict(files)) == "podman"
    assert effective_network({"10-ours.conflist": OURS[1], "05-bad.conflist": b"{"}) is None


def test_files_are_read_as_libcni_reads_them() -> None:
    """Go's decoder: keys match case-insensitively (the last match wins) and a field
    of the wrong JSON kind fails the file. `make fuzz` found the second: a foreign
    `{"ipam":[[]],"type":[null]}` crashed the model (and with it the agent's pass)."""
    fuzz_found = parse_config(".conf", b'{"ipam":[[]],"type":[null]}')
    assert fuzz_found.error == "config has 'type' as an array, not a string"
    assert parse_config("a.conf", b'{"type":"bridge","ipam":[]}').error == (
        "config has 'ipam' as an array, not an object"
    )
    assert parse_config("a.conf", b'{"type":"bridge","ipam":{"type":5}}').error == (
        "config has 'ipam.type' as a number, not a string"
    )
    assert parse_config("a.conf", b'{"type":"bridge","name":7}').error == (
        "config has 'name' as a number, not a string"
    )
    # A conflist's own keys are map lookups (exact); its plugins are structs (folded).
    folded = parse_config(
        "a.conflist",
        b'{"cniVersion":"1.0.0","name":"n","plugins":[{"Type":"bridge","IPAM":{"TYPE":"x"}}]}',
    )
    assert folded.valid and folded.network == "n" and folded.types == ("bridge", "x")
    assert parse_config("a.conflist", b'{"Name":"n","plugins":[{"type":"b"}]}').error == (
        "conflist has no 'name'"
    )
    last_wins = parse_config("a.conf", b'{"type":"bridge","TYPE":"macvlan"}')
    assert last_wins.types == ("macvlan",)
    analysis = analyze(
        [OURS, ("00-x.conf", b'{"ipam":[[]],"type":[null]}')], ["10-ours.conflist"], V
    )
    assert analysis.containerd.healthy is False and by_file(analysis)["00-x.conf"].node_killer
