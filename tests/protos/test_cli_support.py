"""What the three commands share: addresses with a default port, validated log levels, TOML config files."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from dellm.protos.cli_config import add_config_argument, parse_with_config
from dellm.protos.cli_logging import add_log_level_argument, configure_logging
from dellm.protos.transport import with_default_port


@pytest.mark.parametrize(("given", "expected"), [
    ("localhost", "localhost:50050"),
    ("localhost:6000", "localhost:6000"),
    ("10.0.0.5", "10.0.0.5:50050"),
    (" coordinator.lan ", "coordinator.lan:50050"),
    ("[::1]", "[::1]:50050"),
    ("[::1]:7000", "[::1]:7000"),
    ("::1", "[::1]:50050"),
])
def test_a_missing_port_means_50050(given: str, expected: str) -> None:
    assert with_default_port(given) == expected


@pytest.mark.parametrize("bad", ["", "host:", "host:http", "host:70000", "host:0", ":5000", "[::1]:x"])
def test_a_bad_port_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="HOST"):
        with_default_port(bad)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo")
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget", type=float, default=1.5)
    p.add_argument("--discovery", choices=["mdns", "none"], default="mdns")
    p.add_argument("--advertise", action=argparse.BooleanOptionalAction, default=True)
    add_log_level_argument(p)
    add_config_argument(p)
    return p


@pytest.mark.parametrize("level", ["verbose", "loud", ""])
def test_an_unknown_log_level_is_refused_with_the_choices(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["--log-level", level])
    assert exited.value.code == 2
    assert "trace, debug, info, warning, error" in capsys.readouterr().err


def test_log_levels_take_any_case_and_hold_grpc_at_warning() -> None:
    assert parser().parse_args(["--log-level", "DEBUG"]).log_level == "debug"
    try:
        configure_logging("debug")
        assert logging.getLogger().level == logging.DEBUG
        assert logging.getLogger("grpc").level == logging.WARNING  # grpc's own debug lines stay out
        assert logging.getLogger("grpc._cython.cygrpc").getEffectiveLevel() == logging.WARNING
        configure_logging("trace")  # ... unless asked for
        assert logging.getLogger("grpc").level == logging.DEBUG
    finally:
        configure_logging("info")


def test_config_file_sets_defaults_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('listen = "0.0.0.0:7000"\nthreads = 3\nbudget = 2\ndiscovery = "none"\nadvertise = false\n'
                      'log_level = "debug"\n', encoding="utf-8")
    args = parse_with_config(parser(), ["--config", str(config), "--threads", "5"])
    assert (args.listen, args.threads, args.budget, args.discovery, args.advertise, args.log_level) == (
        "0.0.0.0:7000", 5, 2.0, "none", False, "debug")


@pytest.mark.parametrize(("text", "message"), [
    ('lisen = "x"\n', "unknown key 'lisen'"),
    ('threads = "many"\n', "threads = 'many'"),
    ("threads = 2.5\n", "threads"),
    ('discovery = "dns"\n', "takes one of mdns, none"),
    ('advertise = "no"\n', "takes true or false"),
    ('log-level = "verbose"\n', "unknown log level"),
    ("listen = [1, 2]\n", "takes one value"),
    ("this is not toml\n", "is not valid TOML"),
])
def test_a_bad_config_file_is_refused_saying_why(tmp_path: Path, text: str, message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        parse_with_config(parser(), ["--config", str(config)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(config) in err and message in err


def test_a_missing_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_with_config(parser(), ["--config", str(tmp_path / "none.toml")])
    assert "cannot read the config file" in capsys.readouterr().err
