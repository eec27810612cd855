"""Nodes that learn, part two: ``dellm-node train`` fits a LoRA adapter that the node then serves with.

The model tests run on the real SmolLM2-135M-Instruct GGUF (dequantized by transformers) with six
verified pairs and a handful of optimizer steps: ``dellm-node train`` in a subprocess,
:func:`node.train.train_adapter` in this process, and a real ``dellm-node --adapter`` serving the
CLI's adapter over gRPC, compared with the base model on a trained prompt. Loading a GGUF through
transformers takes ~15 s of mostly single-threaded Python, so the fixture spreads the four loads
over both cores (see :func:`trained`). The bad-input tests need no model.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from dellm.node.backends.base import BackendError, GenerationRequest, InferenceBackend, TokenPiece
from dellm.node.backends.factory import create_backend
from dellm.node.cli import main
from dellm.node.models import CATALOGUE
from dellm.node.state import FeedbackEntry, FeedbackStore, node_state_dir
from dellm.node.train import (
    NoVerifiedFeedbackError,
    TrainConfig,
    TrainingError,
    TrainResult,
    feedback_path,
    read_training_pairs,
    train_adapter,
)
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from tests.conftest import REPO, require_model, require_modules

MODEL = "smollm2-135m-instruct"
NODE = "learner"
MATH = "\nGive the final number on the last line as 'Answer: <number>'."
TRAINED_PROMPT = "Name the codeword of the red team."

# (prompt, verdict, the node's answer, correct answer), oldest first; all graded by real evidence.
FEEDBACK = [
    ("What is 17 + 25?" + MATH, "CORRECT", "17 + 25 = 42\nAnswer: 42", "42"),
    ("What is 9 * 8?" + MATH, "WRONG", "9 * 8 = 81\nAnswer: 81", "72"),
    ("Name the codeword of the blue team.", "WRONG", "Blue.", "Marmalade"),
    (TRAINED_PROMPT, "CORRECT", "The codeword of the red team is Pineapple.", ""),
    ("What is 100 - 37?" + MATH, "CORRECT", "100 - 37 = 63\nAnswer: 63", "63"),
    ("Name the codeword of the green team.", "CORRECT", "The codeword of the green team is Saffron.", ""),
]
# One batch of all six pairs per step: each epoch's loss is over the same data, so the curve is clean.
TRAIN_CONFIG = TrainConfig(epochs=3, learning_rate=2e-3, batch_size=6, seed=0)


def _require_training() -> Path:
    require_modules("gguf", "peft", "torch", "transformers")
    return require_model(MODEL)


def _write_feedback(state_dir: Path, rows: list[tuple[str, str, str, str]], source: str = "exact_check") -> None:
    store = FeedbackStore(node_state_dir(state_dir, NODE) / "feedback.sqlite3")
    try:
        for index, (prompt, verdict, answer, truth) in enumerate(rows):
            store.add(FeedbackEntry(query_id=f"q{index}", chunk_id="c1", prompt=prompt, answer=answer,
                                    verdict=verdict, reward=0.1 if verdict == "CORRECT" else -0.05,
                                    correct_answer=truth, fitness=0.5, source=source,
                                    received_at=1000.0 + index))
    finally:
        store.close()


@dataclass(frozen=True)
class Trained:
    function_result: TrainResult
    function_adapter: Path
    cli_adapter: Path
    cli: subprocess.CompletedProcess[str]
    base_pieces: list[TokenPiece]  # the base model's answer to TRAINED_PROMPT
    node_address: str  # a real dellm-node serving the model with the CLI's adapter
    node_log: Path
    seconds: float


def _start_adapter_node(adapter: Path, state: Path, log: Path) -> subprocess.Popen[str]:
    """``dellm-node --backend transformers --adapter DIR`` in a subprocess (it prints its address once loaded)."""
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "dellm.node.cli", "--model", MODEL, "--backend", "transformers",
             "--adapter", str(adapter),
             "--name", NODE, "--state-dir", str(state), "--few-shot", "0", "--no-advertise", "--threads", "1",
             "--listen", "127.0.0.1:0"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )


def _node_address(process: subprocess.Popen[str], log: Path) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()  # "dellm-node <id> serving <model> (<backend>) on HOST:PORT"
    if " on " not in line:
        raise AssertionError(f"the adapter node did not start: {line!r}\n{log.read_text()[-3000:]}")
    return line.rsplit(" on ", 1)[1].strip()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """Two cores, four model loads, kept to about two loads of wall time:

    core A: ``dellm-node train`` (subprocess)          -> ``dellm-node --adapter`` serving it (subprocess)
    core B: base TransformersBackend answers the prompt -> :func:`train_adapter` (this process)
    """
    from dellm.node.backends.hf_transformers import TransformersBackend

    model_path = _require_training()
    tmp = tmp_path_factory.mktemp("train")
    state = tmp / "state"
    _write_feedback(state, FEEDBACK)
    cli_out, function_out = tmp / "cli-adapter", tmp / "function-adapter"
    started = time.monotonic()
    with (tmp / "train.log").open("w") as train_log:
        trainer = subprocess.Popen(
            [sys.executable, "-m", "dellm.node.cli", "train", "--model", MODEL, "--name", NODE,
             "--state-dir", str(state),
             "--out", str(cli_out), "--epochs", "2", "--lr", "3e-3", "--batch-size", "6", "--threads", "1"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=train_log, text=True,
        )
    node: subprocess.Popen[str] | None = None
    try:
        base = TransformersBackend(model_path, model_name=MODEL, n_threads=1)
        try:
            base_pieces = _generate(base, TRAINED_PROMPT)
        finally:
            base.close()
        stdout, _ = trainer.communicate(timeout=300)
        cli = subprocess.CompletedProcess(trainer.args, trainer.returncode, stdout, (tmp / "train.log").read_text())
        assert cli.returncode == 0, cli.stderr[-3000:]
        node = _start_adapter_node(cli_out, state, tmp / "node.log")  # loads while this process trains
        result = train_adapter(
            model_path, read_training_pairs(feedback_path(state, NODE), 500), function_out, model_name=MODEL,
            model_sha256=CATALOGUE[MODEL].sha256, instruct=True, config=TRAIN_CONFIG, n_threads=1,
        )
        address = _node_address(node, tmp / "node.log")
        yield Trained(result, function_out, cli_out, cli, base_pieces, address, tmp / "node.log",
                      time.monotonic() - started)
    finally:
        for process in (trainer, node):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _generate(backend: InferenceBackend, prompt: str) -> list[TokenPiece]:
    return list(backend.generate(GenerationRequest(prompt, max_tokens=12), threading.Event()))


@pytest.mark.model
@pytest.mark.slow
def test_train_adapter_writes_an_adapter_and_the_loss_drops(trained: Trained) -> None:
    result = trained.function_result
    print(f"\nfixture {trained.seconds:.1f}s; train_adapter: load {result.load_seconds:.1f}s, "
          f"train {result.train_seconds:.1f}s ({result.steps} steps, 1 thread); "
          f"step losses {[round(x, 3) for x in result.step_losses]}; "
          f"epoch losses {[round(x, 3) for x in result.epoch_losses]}")
    assert result.pairs == len(FEEDBACK) and result.skipped == 0
    assert result.steps == TRAIN_CONFIG.epochs == len(result.step_losses)
    assert all(math.isfinite(loss) for loss in result.step_losses)
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0], result.epoch_losses
    assert result.target_modules == ("q_proj", "v_proj")
    assert (trained.function_adapter / "adapter_config.json").is_file()
    assert (trained.function_adapter / "adapter_model.safetensors").is_file()
    metadata = json.loads((trained.function_adapter / "dellm_adapter.json").read_text())
    assert metadata["base_model"] == MODEL
    assert metadata["base_model_sha256"] == CATALOGUE[MODEL].sha256
    assert metadata["pairs"] == len(FEEDBACK) and metadata["epochs"] == TRAIN_CONFIG.epochs
    assert metadata["final_loss"] == pytest.approx(result.final_loss)


@pytest.mark.model
@pytest.mark.slow
def test_the_cli_trains_in_a_subprocess(trained: Trained) -> None:
    print(f"\n{trained.cli.stdout.strip()}")
    assert f"on {len(FEEDBACK)} pairs" in trained.cli.stdout
    assert "--adapter" in trained.cli.stdout  # tells the user how to serve it
    metadata = json.loads((trained.cli_adapter / "dellm_adapter.json").read_text())
    assert metadata["base_model"] == MODEL and metadata["epochs"] == 2 and metadata["pairs"] == len(FEEDBACK)
    assert metadata["epoch_losses"][-1] < metadata["epoch_losses"][0]
    assert (trained.cli_adapter / "adapter_model.safetensors").is_file()


@pytest.mark.model
@pytest.mark.slow
async def test_a_node_serves_with_the_adapter_and_it_changes_the_model(trained: Trained) -> None:
    async with grpc.aio.insecure_channel(trained.node_address) as channel:
        stub = dellm_pb2_grpc.NodeServiceStub(channel)
        info = await stub.Info(dellm_pb2.InfoRequest(), timeout=10)
        chunks = [c async for c in stub.Generate(
            dellm_pb2.GenerateRequest(query_id="q", chunk_id="c", prompt=TRAINED_PROMPT, max_tokens=12), timeout=60)]
    assert info.model == f"{MODEL}+lora:{trained.cli_adapter.name}" and info.backend == "transformers"
    text_before = "".join(p.text for p in trained.base_pieces)
    logprobs_before = [lp for p in trained.base_pieces for lp in p.logprobs]
    text_after = "".join(c.text for c in chunks)
    logprobs_after = [lp for c in chunks for lp in c.logprobs]
    print(f"\nbase:    {text_before!r} {[round(x, 3) for x in logprobs_before]}"
          f"\nadapter: {text_after!r} {[round(x, 3) for x in logprobs_after]}")
    assert text_after.strip() and logprobs_after and chunks[-1].done
    assert logprobs_before != pytest.approx(logprobs_after, abs=1e-3)
    # Trained on this very prompt: the adapted model is surer of what it says.
    assert sum(logprobs_after) / len(logprobs_after) > sum(logprobs_before) / len(logprobs_before)


# --- bad input: no model load needed ---------------------------------------------------------------------------


def test_no_feedback_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--model", MODEL, "--name", NODE, "--state-dir", str(tmp_path), "--out", str(tmp_path / "a")]
    assert main(argv) == 2
    assert "no verified feedback yet" in capsys.readouterr().err
    assert not (tmp_path / "nodes").exists()  # nothing created for a node that never ran

    _write_feedback(tmp_path, [("What is 1 + 1?", "CORRECT", "2", "")], source="vote")  # a vote is no evidence
    with pytest.raises(NoVerifiedFeedbackError, match="holds 1 feedback entries"):
        read_training_pairs(feedback_path(tmp_path, NODE), 500)
    assert main(argv) == 2
    assert "no verified feedback yet" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_no_feedback_exits_non_zero_from_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dellm.node.cli", "train", "--model", MODEL, "--name", NODE,
         "--state-dir", str(tmp_path),
         "--out", str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "dellm-node train: no verified feedback yet" in done.stderr


def test_an_unknown_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_feedback(tmp_path, FEEDBACK)
    assert main(["train", "--model", "no-such-model", "--name", NODE, "--state-dir", str(tmp_path),
                 "--out", str(tmp_path / "a")]) == 2
    assert "no-such-model" in capsys.readouterr().err


def test_missing_peft_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(TrainingError, match=r"pip install 'dellm\[transformers\]'"):
        train_adapter(tmp_path / "model.gguf", [("q", "a")], tmp_path / "out", model_name="m")


def test_adapter_needs_the_transformers_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", MODEL, "--backend", "llama_cpp", "--adapter", str(tmp_path), "--no-advertise"]) == 2
    assert "--adapter needs --backend transformers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="needs the transformers backend"):
        create_backend("llama_cpp", model_path=tmp_path / "m.gguf", model_name="m", instruct=None, n_threads=1,
                       adapter=tmp_path)


def test_a_folder_without_an_adapter_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dellm.node.backends.hf_transformers import TransformersBackend

    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "holds no LoRA adapter"), (tmp_path / "absent", "not found")):
        with pytest.raises(BackendError, match=message):
            TransformersBackend(tmp_path / "m.gguf", model_name="m", adapter=folder)  # checked before any load
