"""The agent's and operator's flags for declared binaries."""

import pytest
from cni_operator import cli


def test_binary_flags_parse_and_prefixes_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNIWARDEN_BINARY_URL_PREFIXES", raising=False)
    args = cli.build_parser().parse_args(
        [
            "agent",
            "--binary-url-prefix=https://h.example/a/",
            "--binary-url-prefix=https://h.example/b/",
            "--binary-fetch-timeout=7.5",
            "--binary-max-bytes=1024",
        ]
    )
    assert cli._sources(args).url_prefixes == ("https://h.example/a/", "https://h.example/b/")
    assert (args.binary_fetch_timeout, args.binary_max_bytes) == (7.5, 1024)
    for bad in ("--binary-url-prefix=https://h.example/a", "--binary-max-bytes=0"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["agent", bad])
    monkeypatch.setenv("CNIWARDEN_BINARY_URL_PREFIXES", "https://h.example/c/ ftp://x/")
    env_args = cli.build_parser().parse_args(["operator"])
    with pytest.raises(SystemExit, match=r"CNIWARDEN_BINARY_URL_PREFIXES: .*ftp://x/"):
        cli._sources(env_args)


def test_a_node_command_in_the_controller_image_says_where_to_run_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The controller image leaves grpcio out: `cniwarden gc` there names the image to use
    instead of a traceback, and other import errors are not hidden."""
    import sys  # noqa: PLC0415

    for module in ("cni_operator.leakgc", "cni_operator.node.cri"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "grpc", None)
    assert cli.main(["gc", "--dry-run"]) == 2
    assert "needs grpc" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "cni_operator.revisions", None)
    monkeypatch.delitem(sys.modules, "cni_operator.rollback", raising=False)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["rollback", "some-network"])
