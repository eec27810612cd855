"""LlamaCppBackend on the real Qwen2.5-Coder-0.5B-Instruct GGUF (and the factory that makes it)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dellm.node.backends.base import (
    BackendError,
    GenerationRequest,
    InferenceBackend,
    TokenPiece,
    confidence_from_logprobs,
    stream_generation,
)
from dellm.node.backends.llama_cpp import LlamaCppBackend  # imports llama_cpp only when a model loads
from dellm.node.models import default_cache_dir
from tests.conftest import require_model, require_modules

QWEN_PATH = default_cache_dir() / "qwen2.5-coder-0.5b-instruct.gguf"
PERCENT_QUESTION = "What is 10% of 1000? Answer with just the number."


@pytest.fixture(scope="module")
def qwen() -> Iterator[LlamaCppBackend]:
    require_modules("llama_cpp")
    backend = LlamaCppBackend(
        require_model("qwen2.5-coder-0.5b-instruct"), model_name="qwen2.5-coder-0.5b-instruct", n_threads=2
    )
    yield backend
    backend.close()


def _run(
    backend: InferenceBackend, request: GenerationRequest, cancel: threading.Event | None = None
) -> list[TokenPiece]:
    return list(backend.generate(request, cancel or threading.Event()))


def _text(pieces: list[TokenPiece]) -> str:
    return "".join(p.text for p in pieces)


def _logprobs(pieces: list[TokenPiece]) -> list[float]:
    return [lp for p in pieces for lp in p.logprobs]


@pytest.mark.model
def test_describe_reads_the_gguf_metadata(qwen: LlamaCppBackend) -> None:
    description = qwen.describe()
    assert description.backend == "llama_cpp"
    assert description.model == "qwen2.5-coder-0.5b-instruct"
    assert description.quantization == "Q4_K_M"
    assert description.context_size == 4096
    assert description.model_path == str(QWEN_PATH)
    assert qwen.instruct is True  # detected from the chat template


@pytest.mark.model
def test_answers_a_percentage_question(qwen: LlamaCppBackend) -> None:
    pieces = _run(qwen, GenerationRequest(PERCENT_QUESTION, max_tokens=16))
    assert "100" in _text(pieces)
    assert pieces[-1].finish_reason == "stop"
    assert all(p.finish_reason is None for p in pieces[:-1])


@pytest.mark.model
def test_logprobs_are_real_and_give_a_confidence(qwen: LlamaCppBackend) -> None:
    pieces = _run(qwen, GenerationRequest("Name three primary colours.", max_tokens=12))
    logprobs = _logprobs(pieces)
    assert len(logprobs) >= 3
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in logprobs)
    assert any(lp < -1e-4 for lp in logprobs)  # not a placeholder of zeros
    assert 0.0 < confidence_from_logprobs(logprobs) <= 1.0


@pytest.mark.model
def test_logprobs_match_llama_cpp_python_own_logprobs(qwen: LlamaCppBackend) -> None:
    """The cheap per-token logprobs equal create_completion(logprobs=1) on a logits_all context."""
    import llama_cpp

    request = GenerationRequest("Name a primary colour.", max_tokens=6)
    ours = [(p.text, p.logprobs[0]) for p in _run(qwen, request) if len(p.logprobs) == 1]
    prompt = qwen._formatter(messages=[{"role": "user", "content": request.prompt}]).prompt
    reference = llama_cpp.Llama(model_path=str(QWEN_PATH), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    try:
        out = reference.create_completion(prompt, max_tokens=6, temperature=0.0, logprobs=1)
    finally:
        reference.close()
    completion: Any = out  # a dict (not streaming); its TypedDict marks logprobs optional
    logprobs = completion["choices"][0]["logprobs"]
    expected = [(str(t), float(lp)) for t, lp in zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True)]
    # Two contexts may part ways at a near-tie (or one may stop sooner): compare the tokens both chose.
    pairs = zip(ours, expected, strict=False)
    same = next((i for i, (a, b) in enumerate(pairs) if a[0] != b[0]), min(len(ours), len(expected)))
    assert same >= 3, (ours, expected)
    assert [lp for _, lp in ours[:same]] == pytest.approx([lp for _, lp in expected[:same]], abs=1e-3)


@pytest.mark.model
def test_tokens_arrive_incrementally(qwen: LlamaCppBackend) -> None:
    request = GenerationRequest("Count from 1 to 30, separated by commas.", max_tokens=40)
    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[TokenPiece] = []
    for piece in qwen.generate(request, threading.Event()):
        arrivals.append(time.monotonic() - started)
        pieces.append(piece)
    assert sum(1 for p in pieces if p.text) > 10
    first, last = arrivals[0], arrivals[-1]
    # Streaming, not buffering: the first piece comes long before the last one.
    assert first < 0.5 * last, (first, last)


@pytest.mark.model
def test_max_tokens_ends_with_length(qwen: LlamaCppBackend) -> None:
    pieces = _run(qwen, GenerationRequest("Write a long story about a lighthouse keeper.", max_tokens=5))
    assert pieces[-1].finish_reason == "length"
    assert len(_logprobs(pieces)) == 5
    assert _text(pieces).strip()


@pytest.mark.model
def test_stop_sequence_cuts_the_text(qwen: LlamaCppBackend) -> None:
    request = GenerationRequest("Count from 1 to 10, separated by commas.", max_tokens=30, stop=(",",))
    pieces = _run(qwen, request)
    assert pieces[-1].finish_reason == "stop"
    text = _text(pieces)
    assert "," not in text
    assert "1" in text


@pytest.mark.model
def test_cancel_stops_early(qwen: LlamaCppBackend) -> None:
    cancel = threading.Event()
    pieces: list[TokenPiece] = []
    request = GenerationRequest("Write a long story about a lighthouse keeper.", max_tokens=200)
    for piece in qwen.generate(request, cancel):
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert pieces[-1].finish_reason == "cancelled"
    assert pieces[-1].text == ""
    assert len(_logprobs(pieces)) <= 4


@pytest.mark.model
def test_base_prompt_mode_stops_at_the_end_of_the_answer() -> None:
    require_modules("llama_cpp")
    backend = LlamaCppBackend(
        require_model("qwen2.5-coder-0.5b-instruct"), model_name="qwen-base", instruct=False, n_threads=2, n_ctx=512
    )
    try:
        pieces = _run(backend, GenerationRequest("What is the capital of France?", max_tokens=24))
    finally:
        backend.close()
    text = _text(pieces)
    assert "Paris" in text
    assert "Question:" not in text and "\n\n" not in text


@pytest.mark.model
@pytest.mark.asyncio
async def test_two_tasks_share_one_backend_through_stream_generation(qwen: LlamaCppBackend) -> None:
    lock = asyncio.Lock()
    events: list[str] = []

    async def ask(tag: str, prompt: str) -> list[TokenPiece]:
        pieces: list[TokenPiece] = []
        async for piece in stream_generation(qwen, GenerationRequest(prompt, max_tokens=16), lock):
            events.append(tag)
            pieces.append(piece)
        return pieces

    percent, capital = await asyncio.gather(
        ask("a", PERCENT_QUESTION),
        ask("b", "What is the capital of France? Answer with one word."),
    )
    assert "100" in _text(percent)
    assert "Paris" in _text(capital)
    assert percent[-1].finish_reason == capital[-1].finish_reason == "stop"
    # The lock serializes the generations: one stream ends before the other starts.
    assert events in (sorted(events), sorted(events, reverse=True))


PLAIN_SYSTEM = "You are a concise assistant. Answer directly in plain text, without code."
PROGRAM_SYSTEM = ("You are a careful assistant. You solve arithmetic by writing a short Python program, then you "
                  "state its result.")
# A node's requests as a coordinator sends them: the two system prompts alternate.
ALTERNATING = (
    GenerationRequest("What is the capital of France?\nAnswer concisely.", max_tokens=16, system=PLAIN_SYSTEM),
    GenerationRequest("What is 7 times 8?\nWrite a short Python program.", max_tokens=16, system=PROGRAM_SYSTEM),
    GenerationRequest("What is the chemical symbol for gold?\nAnswer concisely.", max_tokens=16, system=PLAIN_SYSTEM),
    GenerationRequest("What is 12 plus 30?\nWrite a short Python program.", max_tokens=16, system=PROGRAM_SYSTEM),
)


def _system_prefix_tokens(backend: LlamaCppBackend, system: str) -> int:
    """How many leading tokens two chat prompts with ``system`` share (the system turn and the user header)."""
    llm: Any = backend._llm
    one, two = (backend._prompt_tokens(llm, GenerationRequest(q, system=system)) for q in ("Hi", "Who are you?"))
    return next(i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b)


def _decoded_tokens(backend: LlamaCppBackend) -> int:
    """Tokens llama.cpp has decoded in the backend's context (its performance counters, each at least 1)."""
    import llama_cpp

    llm: Any = backend._llm
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return int(perf.n_p_eval) + int(perf.n_eval)


@pytest.mark.model
def test_the_prompt_cache_skips_the_system_prompt_of_the_next_request(qwen: LlamaCppBackend) -> None:
    _run(qwen, GenerationRequest("Name a primary colour.", max_tokens=4, system=PLAIN_SYSTEM))
    _run(qwen, GenerationRequest("Name a planet.", max_tokens=4, system=PLAIN_SYSTEM))
    second = qwen.last_prompt
    assert second is not None
    assert second.cached_tokens >= _system_prefix_tokens(qwen, PLAIN_SYSTEM) >= 20
    assert second.evaluated_tokens == second.prompt_tokens - second.cached_tokens < second.prompt_tokens


@pytest.mark.model
def test_alternating_system_prompts_each_stay_cached(qwen: LlamaCppBackend) -> None:
    """After the first two requests, each prompt's own system prefix comes from the cache, though the one
    before it had the other system prompt (the plain prefix reuse alone would keep only a few tokens)."""
    _run(qwen, GenerationRequest("Say hello.", max_tokens=2))  # llama.cpp's counters read 1 until they count
    evaluations, decoded = [], []
    for request in ALTERNATING:
        before = _decoded_tokens(qwen)
        pieces = _run(qwen, request)
        evaluations.append(qwen.last_prompt)
        # What llama.cpp itself decoded: the prompt tokens said to be evaluated, then each answer token that
        # was followed by another (the end-of-generation token, when the model ended).
        followed = len(_logprobs(pieces)) - (pieces[-1].finish_reason == "length")
        decoded.append(_decoded_tokens(qwen) - before - followed)
    assert decoded == [e.evaluated_tokens for e in evaluations if e is not None], evaluations
    for request, evaluation in zip(ALTERNATING[2:], evaluations[2:], strict=True):
        assert evaluation is not None
        assert evaluation.cached_tokens >= _system_prefix_tokens(qwen, request.system or ""), evaluations


@pytest.mark.model
def test_without_the_prompt_cache_every_prompt_is_evaluated_whole_and_the_answers_are_the_same(
    qwen: LlamaCppBackend,
) -> None:
    require_modules("llama_cpp")
    uncached = LlamaCppBackend(require_model("qwen2.5-coder-0.5b-instruct"), model_name="qwen-uncached",
                               n_threads=2, prompt_cache=False)
    try:
        assert uncached.prompt_cache is False and qwen.prompt_cache is True
        for request in ALTERNATING:
            without = _text(_run(uncached, request))
            evaluation = uncached.last_prompt
            assert evaluation is not None and evaluation.evaluated_tokens == evaluation.prompt_tokens
            # Greedy: the cache changes the cost, not the answer (on questions with a clear answer: the reused
            # prefix was computed in another batch, so its last bits may differ and a near-tie could flip).
            assert _text(_run(qwen, request)) == without
    finally:
        uncached.close()


def test_corrupt_gguf_raises_backend_error_naming_the_path(tmp_path: Path) -> None:
    require_modules("llama_cpp")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(BackendError, match=re.escape(str(broken))):
        LlamaCppBackend(broken, model_name="broken")


def test_missing_file_raises_backend_error(tmp_path: Path) -> None:
    require_modules("llama_cpp")
    with pytest.raises(BackendError, match=r"absent\.gguf"):
        LlamaCppBackend(tmp_path / "absent.gguf", model_name="absent")


def test_factory_rejects_an_unknown_kind() -> None:
    from dellm.node.backends.factory import create_backend

    with pytest.raises(ValueError, match="llama_cpp, transformers, scripted"):
        create_backend("onnx", model_path=None, model_name="x", instruct=None, n_threads=None)


def test_factory_needs_a_model_path_for_model_backends() -> None:
    from dellm.node.backends.factory import create_backend

    with pytest.raises(ValueError, match="model_path"):
        create_backend("llama_cpp", model_path=None, model_name="x", instruct=None, n_threads=None)


@pytest.mark.model
def test_factory_builds_the_llama_cpp_backend() -> None:
    require_modules("llama_cpp")
    from dellm.node.backends.factory import create_backend

    backend = create_backend(
        "llama_cpp",
        model_path=require_model("qwen2.5-coder-0.5b-instruct"),
        model_name="qwen",
        instruct=None,
        n_threads=1,
        prompt_cache=False,
    )
    try:
        assert isinstance(backend, LlamaCppBackend)
        assert backend.describe().backend == "llama_cpp"
        assert backend.prompt_cache is False
    finally:
        backend.close()
