"""One test per runtime rule of the model: which rule set a runtime version gets,
and each place where the readers (libcni, go-cni, ocicni) differ from a naive
reading. tests/integration/runtimes proves the same rules against the runtimes."""

import json
import socket
from pathlib import Path

import pytest
from cni_operator.node.scan import read_config_dir
from cni_operator.runtime_order import (
    ALL_RUNTIMES,
    IGNORE_BINARIES,
    RuntimeRules,
    analyze,
    effective_network,
    parse_config,
    parse_go_version,
    predict,
    predict_all,
    rule_set_for,
    rules_for,
)

ALL = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
V = {"rec": ALL, "rec-old": ["0.3.1", "0.4.0"], "rec-ipam": ALL, "loopback": ALL}
C16 = RuntimeRules("containerd", (1, 6, 20))
C17 = RuntimeRules("containerd", (1, 7, 35))
C2 = RuntimeRules("containerd", (2, 4, 2))
CRIO = RuntimeRules("crio", (1, 34, 0))


def conflist(name: str, version: str = "1.0.0", kind: str = "rec", **extra: object) -> bytes:
    body: dict[str, object] = {"cniVersion": version, "name": name, "plugins": [{"type": kind}]}
    body.update(extra)
    return json.dumps(body).encode()


def test_rule_sets_by_kind_and_version() -> None:
    assert rule_set_for("containerd", (1, 6, 20)).libcni == (1, 1)
    assert rule_set_for("containerd", (1, 7, 35)).name == "containerd-1"
    assert rule_set_for("containerd", (2, 0, 5)).libcni == (1, 2)
    assert rule_set_for("containerd", (2, 4, 2)).libcni == (1, 3)
    assert rule_set_for("containerd", None).name == "containerd-2"
    assert rule_set_for("crio", (1, 30, 1)).libcni == (1, 1)
    assert rule_set_for("crio", (1, 34, 0)).libcni == (1, 3)
    assert rules_for("crio", (1, 34, 0), default_network="x").default_network == "x"
    assert RuntimeRules("containerd").label.startswith("containerd (version unknown")
    with pytest.raises(ValueError, match="unknown runtime kind"):
        RuntimeRules("docker", (1,))
    with pytest.raises(ValueError, match="max_conf_num"):
        RuntimeRules("containerd", (1, 6), max_conf_num=-1)


def test_dot_files_are_listed_and_sort_first() -> None:
    files = {"10-a.conflist": conflist("a"), ".00-dot.conflist": conflist("dot")}
    for rules in (C16, C2, CRIO):
        assert predict(files, rules, V).network == "dot"
    truncated = {"10-a.conflist": conflist("a"), ".00-dot.conflist": conflist("dot")[:20]}
    assert not predict(truncated, C16, V).network_ready
    assert predict(truncated, CRIO, V).network == "a"


def test_crio_validates_plugin_types_not_ipam() -> None:
    body = {
        "cniVersion": "1.0.0",
        "name": "i",
        "plugins": [{"type": "rec", "ipam": {"type": "gone"}}],
    }
    files = {"00-i.conflist": json.dumps(body).encode(), "10-a.conflist": conflist("a")}
    view = predict(files, CRIO, V)
    assert view.network == "i" and view.network_ready
    assert not view.healthy and "gone" in view.message  # the plugin's IPAM ADD fails
    # A missing plugin type is skipped.
    files["00-i.conflist"] = conflist("i", kind="gone")
    assert predict(files, CRIO, V).network == "a"


def test_crio_skips_a_plugin_without_the_config_version() -> None:
    files = {"00-new.conflist": conflist("new", kind="rec-old"), "10-a.conflist": conflist("a")}
    assert predict(files, CRIO, V).network == "a"
    view = predict(files, C16, V)
    assert view.network == "new" and view.network_ready and not view.healthy


def test_non_semver_version_and_empty_name_load_with_old_libcni() -> None:
    odd = {"00-odd.conflist": conflist("odd", version="1.0"), "10-a.conflist": conflist("a")}
    assert parse_config("00-odd.conflist", odd["00-odd.conflist"]).valid
    view = predict(odd, C16, V)
    assert view.network == "odd" and view.network_ready and not view.healthy
    assert predict(odd, CRIO, V).network == "a"  # VERSION never lists "1.0"
    unnamed = {"00-x.conflist": conflist(""), "10-a.conflist": conflist("a")}
    view = predict(unnamed, C16, V)
    assert view.network == "" and view.network_ready and not view.healthy
    assert "missing network name" in view.message
    crio = predict(unnamed, CRIO, V)
    # ocicni names it by its file, then fails the sandbox reading libcni's cache
    # under the empty name (the differential test found it).
    assert crio.network == "00-x.conflist" and crio.network_ready and not crio.healthy


def test_go_versions() -> None:
    assert parse_go_version("") == (0, 1, 0)
    assert parse_go_version("1.0") == (1, 0, 0)
    assert parse_go_version("1") == (1, 0, 0)
    assert parse_go_version("v1.0.0") is None
    assert parse_go_version("1.0.0-rc1") is None
    assert parse_go_version("1.0.0.0") is None
    assert parse_go_version(" 1.0.0") is None


def test_cni_versions_array_from_libcni_1_2() -> None:
    body = conflist("v", version="0.4.0", cniVersions=["1.0.0", "1.1.0", "2.0.0"])
    assert parse_config("a.conflist", body, (1, 1)).cni_version == "0.4.0"
    assert parse_config("a.conflist", body, (1, 3)).cni_version == "1.1.0"  # 2.0.0 > spec
    bad = conflist("v", cniVersions=["one"])
    assert parse_config("a.conflist", bad, (1, 1)).valid
    assert "cniVersions[0]" in (parse_config("a.conflist", bad, (1, 3)).error or "")
    files = {"00-v.conflist": conflist("v", kind="rec-old", version="0.4.0", cniVersions=["1.0.0"])}
    assert predict(files, C16, V).healthy
    assert not predict(files, C2, V).healthy  # 1.0.0 is picked; rec-old lacks it


def test_plugins_from_a_network_dir_with_libcni_1_3() -> None:
    files = {
        "10-d.conflist": json.dumps({"cniVersion": "1.0.0", "name": "d"}).encode(),
        "d/10-main.conf": json.dumps({"type": "rec"}).encode(),
        "d/ignored.json": b"{",
    }
    assert "no 'plugins'" in (parse_config("10-d.conflist", files["10-d.conflist"]).error or "")
    parsed = parse_config("10-d.conflist", files["10-d.conflist"], (1, 3), files)
    assert parsed.valid and parsed.plugin_types == ("rec",)
    assert not predict(files, C16, V).network_ready
    assert predict(files, C2, V).network == "d"
    # Appended to inline plugins too, unless loadOnlyInlinedPlugins.
    files["10-d.conflist"] = conflist("d")
    files["d/20-bad.conf"] = b"{"
    assert not predict(files, C2, V).network_ready
    files["10-d.conflist"] = conflist("d", loadOnlyInlinedPlugins=True)
    assert predict(files, C2, V).network_ready


def test_crio_crashes_on_a_network_whose_plugins_are_all_in_its_dir() -> None:
    """CRI-O 1.34 (ocicni 0.4.3) panics creating the sandbox: found by the
    differential test (plugins-in-subdir)."""
    files = {
        "10-d.conflist": json.dumps({"cniVersion": "1.0.0", "name": "d"}).encode(),
        "d/10-main.conf": json.dumps({"type": "rec"}).encode(),
    }
    view = predict(files, CRIO, V)
    assert view.network == "d" and view.network_ready and not view.healthy
    assert "crashes" in view.message
    assert predict(files, C2, V).healthy


def test_containerd_max_conf_num() -> None:
    files = {"10-a.conflist": conflist("a"), "20-b.conflist": conflist("b"), "30-c.conf": b"{"}
    assert predict(files, C16, V).networks == ("a",)
    two = RuntimeRules("containerd", (1, 6, 20), max_conf_num=2)
    assert predict(files, two, V).networks == ("a", "b")
    every = RuntimeRules("containerd", (1, 6, 20), max_conf_num=0)
    assert not predict(files, every, V).network_ready  # reads 30-c.conf too


def test_crio_default_network() -> None:
    files = {"10-a.conflist": conflist("a"), "20-b.conflist": conflist("b")}
    pinned = RuntimeRules("crio", (1, 34, 0), default_network="b")
    view = predict(files, pinned, V)
    assert (view.file, view.network) == ("20-b.conflist", "b")
    absent = RuntimeRules("crio", (1, 34, 0), default_network="zz")
    assert not predict(files, absent, V).network_ready


def test_crio_skips_duplicate_names() -> None:
    files = {"10-a.conflist": conflist("a", kind="gone"), "20-a.conflist": conflist("a")}
    assert predict(files, CRIO, V).file == "20-a.conflist"
    files["10-a.conflist"] = conflist("a")
    pinned = RuntimeRules("crio", (1, 34, 0), default_network="a")
    assert predict(files, pinned, V).file == "10-a.conflist"


def test_containerd_2_status_verb() -> None:
    files = {"10-a.conflist": conflist("a", version="1.1.0", kind="rec-old")}
    assert predict(files, C17, V).network_ready
    assert not predict(files, C2, V).network_ready
    old = {"10-a.conflist": conflist("a", version="1.0.0", kind="gone")}
    assert predict(old, C2, V).network_ready  # STATUS only from 1.1.0


def test_bom_and_go_json() -> None:
    assert not parse_config("a.conflist", b"\xef\xbb\xbf" + conflist("a")).valid
    assert not parse_config("a.conf", b'{"type":"rec","mtu":NaN}').valid
    assert parse_config("a.conf", b'{"type":"rec","x":"\xff"}').valid  # Go replaces bad UTF-8


def test_unreadable_entries() -> None:
    files: dict[str, bytes | None] = {"00-dangling.conflist": None, "10-a.conflist": conflist("a")}
    assert not predict(files, C16, V).network_ready
    assert predict(files, CRIO, V).network == "a"


def test_unknown_runtime_is_judged_by_every_rule_set() -> None:
    files = {
        "10-d.conflist": json.dumps({"cniVersion": "1.0.0", "name": "d"}).encode(),
        "d/a.conf": b'{"type":"rec"}',
    }
    views = predict_all(files, V)
    assert list(views) == [r.label for r in ALL_RUNTIMES]
    assert not views["containerd 1.7"].network_ready and views["containerd 2.4"].network_ready
    analysis = analyze(files.items(), [], V)
    assert analysis.broken  # some rule set cannot start pods
    assert not analyze(files.items(), [], V, runtimes=[C2]).broken


def test_effective_network_per_runtime() -> None:
    files = {"00-x.conflist": conflist("x", kind="gone"), "10-a.conflist": conflist("a")}
    assert effective_network(files) == "x"
    assert effective_network(files, CRIO, V) == "a"
    assert effective_network(files, CRIO, IGNORE_BINARIES) == "x"


def test_read_config_dir_lists_what_the_runtimes_list(tmp_path: Path) -> None:
    """Dot-files are listed; a symlink to a directory, a dangling symlink and a socket
    are listed unreadable; a real directory is not listed, its `.conf` files are."""
    (tmp_path / ".00-dot.conflist").write_bytes(conflist("dot"))
    (tmp_path / "10-a.conflist").write_bytes(conflist("a"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "p.conf").write_bytes(b'{"type":"rec"}')
    (tmp_path / "sub" / "p.json").write_bytes(b"{}")
    (tmp_path / "dir.conflist").mkdir()
    (tmp_path / "20-todir.conflist").symlink_to(tmp_path / "sub")
    (tmp_path / "30-dangling.conf").symlink_to(tmp_path / "nowhere")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "40-sock.conf"))
        files = read_config_dir(tmp_path)
    assert files == {
        ".00-dot.conflist": conflist("dot"),
        "10-a.conflist": conflist("a"),
        "sub/p.conf": b'{"type":"rec"}',
        "20-todir.conflist": None,
        "20-todir.conflist/p.conf": b'{"type":"rec"}',
        "30-dangling.conf": None,
        "40-sock.conf": None,
    }
