"""``dellm-node``'s command line: a unique default name, train in --help, log levels, a config file, the
state-folder lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from dellm.node import cli
from dellm.node.state import NodeStateError, check_node_name, lock_state_folder


@pytest.mark.parametrize(("host", "model", "expected"), [
    ("laptop", "qwen2.5-coder-0.5b-instruct", "laptop-qwen2.5-coder-0.5b-instruct"),
    ("laptop", "/models/My Model.Q4_K_M.gguf", "laptop-My-Model.Q4_K_M"),
    ("laptop.example.org", "gemma-3-270m", "laptop-gemma-3-270m"),
    ("laptop", None, "laptop"),
    ("a" * 60, "smollm2-135m-instruct", "a" * 24 + "-smollm2-135m-instruct"),
    ("...", None, "node"),
])
def test_default_name_is_host_plus_model(monkeypatch: pytest.MonkeyPatch, host: str, model: str | None,
                                         expected: str) -> None:
    monkeypatch.setattr(cli.socket, "gethostname", lambda: host)
    name = cli.default_node_name(model)
    assert name == expected and check_node_name(name) == name


def test_two_models_on_one_machine_get_two_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.socket, "gethostname", lambda: "laptop")
    assert cli.default_node_name("gemma-3-270m") != cli.default_node_name("qwen2.5-coder-0.5b-instruct")


def test_help_mentions_train(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "dellm-node train" in out and "--config" in out and "--log-level" in out


def test_unknown_log_level_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--log-level", "verbose"])
    assert exited.value.code == 2 and "unknown log level 'verbose'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_train_args(["--model", "m", "--out", "x", "--log-level", "verbose"])


def test_coordinator_without_port_gets_50050() -> None:
    assert cli.parse_args(["--coordinator", "localhost"]).coordinator == "localhost:50050"


def test_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('model = "gemma-3-270m"\ncoordinator = "coord.lan"\nadvertise = false\nfew-shot = 4\n',
                      encoding="utf-8")
    args = cli.parse_args(["--config", str(config), "--few-shot", "1"])
    assert (args.model, args.coordinator, args.advertise, args.few_shot) == ("gemma-3-270m", "coord.lan:50050",
                                                                             False, 1)


def test_state_folder_is_locked_while_a_node_runs(tmp_path: Path) -> None:
    first = lock_state_folder(tmp_path, "same")
    try:
        with pytest.raises(NodeStateError, match=r"already running as .same.*own --name"):
            lock_state_folder(tmp_path, "same")
    finally:
        first.close()
    lock_state_folder(tmp_path, "same").close()  # free again once the first is gone
    assert list(tmp_path.iterdir()) == []  # nothing written into the folder
