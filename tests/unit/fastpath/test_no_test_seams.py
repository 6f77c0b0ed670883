"""The shipped cni-server carries no test seams; the harness that has them is not shipped."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from devtools import cniserver_harness
from node_plugin.server import cli
from node_plugin.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "option", [["--handler", "devtools.fake_handlers:echo"], ["--hold-tombstones"]]
)
def test_the_shipped_cli_refuses_the_harness_options(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(option)
    assert exited.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_server_config_has_no_test_switch() -> None:
    assert [f.name for f in dataclasses.fields(ServerConfig) if "hold" in f.name] == []


def test_the_harness_takes_them_and_is_not_in_the_wheel() -> None:
    args = cli.build_parser().parse_args([])
    assert not hasattr(args, "handler")
    handler = cniserver_harness.load_handler("devtools.fake_handlers:mirror")
    assert callable(handler)
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    shipped = build["targets"]["wheel"]["packages"]
    assert not any(p.startswith(("devtools", "tests", "bench")) for p in shipped), shipped
