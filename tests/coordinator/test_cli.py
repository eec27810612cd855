"""``dellm-coordinator``'s command line: a TOML config file under the flags, validated log levels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dellm.coordinator.cli import main, parse_args


def test_config_file_sets_flags_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('listen = "0.0.0.0:50050"\nsynth-model = "none"\ndiscovery = "static"\n'
                      'static_nodes = "10.0.0.2:50051"\nredundancy = 3\nprograms = false\nmax-queries = 8\n',
                      encoding="utf-8")
    args = parse_args(["--config", str(config), "--redundancy", "2"])
    assert (args.listen, args.synth_model, args.discovery, args.static_nodes, args.redundancy, args.programs,
            args.max_queries) == ("0.0.0.0:50050", "none", "static", "10.0.0.2:50051", 2, False, 8)


def test_config_file_with_an_unknown_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text('synth_modle = "none"\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--config", str(config)])
    assert exited.value.code == 2 and "unknown key 'synth_modle'" in capsys.readouterr().err


def test_unknown_log_level_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--log-level", "verbose"])
    assert exited.value.code == 2 and "choose one of trace, debug, info, warning, error" in capsys.readouterr().err


@pytest.mark.parametrize("budget", ["-1", "nan"])
def test_a_negative_or_nan_escalation_budget_is_refused(budget: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["--escalation-budget", budget, "--synth-model", "none"]) == 2
    finally:  # main configures logging onto this test's captured stderr: later tests must not write to it
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "--escalation-budget at least 0" in capsys.readouterr().err
