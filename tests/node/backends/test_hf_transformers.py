"""TransformersBackend on the real SmolLM2-135M-Instruct GGUF (Q4_1, dequantized by transformers)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.node.backends.base import (
    BackendError,
    GenerationRequest,
    TokenPiece,
    confidence_from_logprobs,
    stream_generation,
)
from dellm.node.backends.hf_transformers import TransformersBackend  # imports torch only when a model loads
from tests.conftest import require_model, require_modules

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm() -> Iterator[TransformersBackend]:
    require_modules("gguf", "torch", "transformers")
    backend = TransformersBackend(require_model("smollm2-135m-instruct"), model_name="smollm2-135m-instruct",
                                  n_threads=2)
    yield backend
    backend.close()


def _run(backend: TransformersBackend, request: GenerationRequest) -> list[TokenPiece]:
    return list(backend.generate(request, threading.Event()))


def _text(pieces: list[TokenPiece]) -> str:
    return "".join(p.text for p in pieces)


def _logprobs(pieces: list[TokenPiece]) -> list[float]:
    return [lp for p in pieces for lp in p.logprobs]


@pytest.mark.model
def test_describe(smollm: TransformersBackend) -> None:
    description = smollm.describe()
    assert description.backend == "transformers"
    assert description.model == "smollm2-135m-instruct"
    assert description.quantization == "Q4_1"
    assert description.context_size == 8192
    assert smollm.instruct is True


@pytest.mark.model
def test_answers_a_factual_question(smollm: TransformersBackend) -> None:
    pieces = _run(smollm, GenerationRequest("What is the capital of France?", max_tokens=16))
    assert "Paris" in _text(pieces)
    assert pieces[-1].finish_reason == "stop"
    assert all(p.finish_reason is None for p in pieces[:-1])


@pytest.mark.model
def test_answers_an_arithmetic_question(smollm: TransformersBackend) -> None:
    pieces = _run(smollm, GenerationRequest("What is 2 + 2?", max_tokens=16))
    assert "4" in _text(pieces)


@pytest.mark.model
def test_logprobs_are_the_model_own(smollm: TransformersBackend) -> None:
    import torch

    request = GenerationRequest("What is the capital of France?", max_tokens=4)
    pieces = _run(smollm, request)
    logprobs = _logprobs(pieces)
    assert len(logprobs) == 4
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in logprobs)
    assert 0.0 < confidence_from_logprobs(logprobs) <= 1.0
    # The first token's logprob is the log-softmax of a plain forward pass over the prompt.
    inputs = smollm._encode(request)
    with torch.no_grad():
        logits = smollm._model(**inputs).logits[0, -1]
    expected = torch.log_softmax(logits.float(), dim=-1)
    first_token = int(torch.argmax(expected))
    assert smollm._tokenizer.decode([first_token]).strip() == pieces[0].text.strip()
    assert logprobs[0] == pytest.approx(float(expected[first_token]), abs=1e-4)


@pytest.mark.model
def test_tokens_arrive_incrementally(smollm: TransformersBackend) -> None:
    request = GenerationRequest("Count from 1 to 30, separated by commas.", max_tokens=40)
    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[TokenPiece] = []
    for piece in smollm.generate(request, threading.Event()):
        arrivals.append(time.monotonic() - started)
        pieces.append(piece)
    assert sum(1 for p in pieces if p.text) > 10
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])


@pytest.mark.model
def test_max_tokens_ends_with_length(smollm: TransformersBackend) -> None:
    pieces = _run(smollm, GenerationRequest("Write a long story about a lighthouse keeper.", max_tokens=5))
    assert pieces[-1].finish_reason == "length"
    assert len(_logprobs(pieces)) == 5


@pytest.mark.model
def test_cancel_stops_early(smollm: TransformersBackend) -> None:
    cancel = threading.Event()
    pieces: list[TokenPiece] = []
    request = GenerationRequest("Write a long story about a lighthouse keeper.", max_tokens=200)
    for piece in smollm.generate(request, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert pieces[-1].finish_reason == "cancelled"
    assert len(_logprobs(pieces)) <= 4


@pytest.mark.model
def test_sampling_with_temperature_still_reports_logprobs(smollm: TransformersBackend) -> None:
    pieces = _run(smollm, GenerationRequest("Tell me a joke about cats.", max_tokens=8, temperature=0.8))
    logprobs = _logprobs(pieces)
    assert logprobs
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in logprobs)


@pytest.mark.model
@pytest.mark.asyncio
async def test_two_tasks_share_one_backend_through_stream_generation(smollm: TransformersBackend) -> None:
    lock = asyncio.Lock()

    async def ask(prompt: str) -> str:
        pieces = [p async for p in stream_generation(smollm, GenerationRequest(prompt, max_tokens=16), lock)]
        assert pieces[-1].finish_reason == "stop"
        return _text(pieces)

    capital, total = await asyncio.gather(ask("What is the capital of France?"), ask("What is 2 + 2?"))
    assert "Paris" in capital
    assert "4" in total


def test_corrupt_gguf_raises_backend_error_naming_the_path(tmp_path: Path) -> None:
    require_modules("gguf", "torch", "transformers")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(BackendError, match=re.escape(str(broken))):
        TransformersBackend(broken, model_name="broken")
