"""The protocol layer through the public entry point, for inputs that never reach the kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from node_plugin.api import CniRequest, handle

CONFIG = {"cniVersion": "1.1.0", "name": "net", "ipam": {"subnet": "10.0.0.0/24"}}


def call(env: dict[str, str], stdin: bytes | dict[str, Any] = CONFIG) -> tuple[int, Any]:
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    resp = handle(CniRequest("cniwarden-host-local", env, raw))
    return resp.exit_code, json.loads(resp.stdout) if resp.stdout else None


def test_version_never_needs_stdin_or_heavy_imports() -> None:
    code, out = call({"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0 and out["cniVersion"] == "1.1.0"
    assert "1.1.0" in out["supportedVersions"]


def test_version_does_not_import_pydantic_or_pyroute2() -> None:
    probe = (
        "import sys, os; from node_plugin.api import handle, CniRequest;"
        "handle(CniRequest('cniwarden-bridge', {'CNI_COMMAND': 'VERSION'}, b''));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pyroute2')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"


def test_host_local_add_does_not_import_pyroute2(tmp_path: Any) -> None:
    config = {
        "cniVersion": "1.1.0",
        "name": "net",
        "ipam": {"type": "cniwarden-host-local", "subnet": "10.9.0.0/24", "dataDir": str(tmp_path)},
    }
    probe = (
        "import sys, json; from node_plugin.api import handle, CniRequest;"
        "env = {'CNI_COMMAND': 'ADD', 'CNI_CONTAINERID': 'c', 'CNI_NETNS': '/x',"
        " 'CNI_IFNAME': 'eth0', 'CNI_PATH': '/'};"
        f"r = handle(CniRequest('cniwarden-host-local', env, json.dumps({config!r}).encode()));"
        "assert r.exit_code == 0, r.stdout;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "net" / "10.9.0.2").read_bytes() == b"c\r\neth0"


@pytest.mark.parametrize(
    ("env", "code", "needle"),
    [
        ({"CNI_COMMAND": "ADD"}, 4, "CNI_CONTAINERID CNI_NETNS CNI_IFNAME CNI_PATH"),
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "e"}, 4, "CNI_PATH"),
        ({"CNI_COMMAND": "OOPS"}, 4, "OOPS"),
        (
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "-a", "CNI_IFNAME": "e", "CNI_PATH": "/"},
            4,
            "CNI_CONTAINERID",
        ),
        (
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "a", "CNI_IFNAME": "e:1", "CNI_PATH": "/"},
            4,
            "CNI_IFNAME",
        ),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], code: int, needle: str) -> None:
    got, out = call(env)
    assert got == 1 and out["code"] == code and needle in out["msg"]


def test_errors_carry_the_config_version() -> None:
    env = {"CNI_COMMAND": "GC"}
    _, out = call(env, dict(CONFIG, cniVersion="0.4.0"))
    assert out["code"] == 1 and out["cniVersion"] == "0.4.0"


def test_no_command_prints_about_to_stderr_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert call({}, b"") == (0, None)
    assert "cniwarden" in capsys.readouterr().err


def test_handle_is_thread_safe_for_independent_requests(tmp_path: Any) -> None:
    """Real work from many threads at once (host-local on one store): ADDs and DELs in
    parallel, every address handed out once, and exactly the kept ones stay leased."""
    config = {
        "cniVersion": "1.1.0",
        "name": "net",
        "ipam": {"type": "cniwarden-host-local", "subnet": "10.9.0.0/24", "dataDir": str(tmp_path)},
    }
    pods = 24
    env = {"CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/"}
    lock = threading.Lock()
    addresses: dict[str, str] = {}

    def add(i: int) -> None:
        code, out = call({**env, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}"}, config)
        assert code == 0, out
        with lock:
            addresses[f"c{i}"] = out["ips"][0]["address"]

    def delete(i: int) -> None:
        code, out = call({**env, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": f"c{i}"}, config)
        assert code == 0, out

    def run_all(jobs: list[threading.Thread]) -> None:
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(60)
            assert not job.is_alive()

    run_all([threading.Thread(target=add, args=(i,)) for i in range(pods // 2)])
    # New pods come while the first half goes: ADD and DEL interleaved on one store.
    mixed = [threading.Thread(target=add, args=(i,)) for i in range(pods // 2, pods)]
    mixed += [threading.Thread(target=delete, args=(i,)) for i in range(0, pods // 2, 2)]
    run_all(mixed)
    assert len(addresses) == pods and len(set(addresses.values())) == pods, addresses
    kept = {f"c{i}" for i in range(pods)} - {f"c{i}" for i in range(0, pods // 2, 2)}
    leases = {
        p.name: p.read_bytes().split(b"\r\n")[0].decode()
        for p in (tmp_path / "net").iterdir()
        if p.name[0].isdigit()
    }
    assert sorted(leases.values()) == sorted(kept)
    for pod in kept:
        assert leases[addresses[pod].split("/")[0]] == pod


# ---- identifiers are matched in full (issue 11, item 9) --------------------------------


@pytest.mark.parametrize("container", ["pod1\n", "pod1\n\n", "\npod1", "pod1 ", "pod1\r"])
def test_a_container_id_with_a_trailing_newline_is_refused(container: str) -> None:
    """`$` matches before a final newline: `pod1\\n` used to pass as a container id."""
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": container, "CNI_IFNAME": "e", "CNI_PATH": "/"}
    got, out = call(env)
    assert (got, out["code"]) == (1, 4), out
    assert "CNI_CONTAINERID" in out["msg"]


@pytest.mark.parametrize("name", ["rtnet\n", "rtnet\n\n", "rtnet\r\n"])
def test_a_network_name_with_a_trailing_newline_is_refused(name: str, tmp_path: Any) -> None:
    """`rtnet\\n` used to pass, and made a second lease store next to `rtnet`'s: two
    stores handing out the same addresses."""
    config = {
        "cniVersion": "1.1.0",
        "name": name,
        "ipam": {"type": "cniwarden-host-local", "subnet": "10.9.0.0/24", "dataDir": str(tmp_path)},
    }
    env = {"CNI_COMMAND": "GC", "CNI_PATH": "/"}
    got, out = call(env, config)
    assert (got, out["code"]) == (1, 7), out
    assert out["msg"].startswith("invalid network config: name:")
    assert list(tmp_path.iterdir()) == [], "no store was created"


# ---- error codes of hostile inputs (issue 11, item 12) --------------------------------


def test_deeply_nested_json_is_a_decode_failure() -> None:
    """100k levels of nesting used to escape as a RecursionError, answered 999."""
    deep = b'{"cniVersion":"1.1.0","name":"net","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    env = {"CNI_COMMAND": "GC", "CNI_PATH": "/"}
    got, out = call(env, deep)
    assert (got, out["code"]) == (1, 6), out
    assert "nested too deeply" in out["msg"]
    got, out = call(env, b"[" * 100_000)  # and an unterminated one
    assert (got, out["code"]) == (1, 6), out


@pytest.mark.parametrize(
    "variable", ["CNI_IFNAME", "CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH", "CNI_ARGS"]
)
def test_an_environment_value_that_is_not_utf8_is_invalid_env(variable: str) -> None:
    """Non-UTF-8 bytes reach the plugin as surrogates (os.fsdecode, as os.environ and the
    server decode them); CNI_IFNAME's used to make `.encode()` fail with 999."""
    env = {
        "CNI_COMMAND": "DEL",
        "CNI_CONTAINERID": "c1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/",
        variable: "eth" + os.fsdecode(b"\xff\xfe") + "0",
    }
    got, out = call(env)
    assert (got, out["code"]) == (1, 4), out
    assert out["msg"].startswith(f"{variable}: not valid UTF-8")
