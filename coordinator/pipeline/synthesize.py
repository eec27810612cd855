"""Stage 5: merge the chunk results into one coherent answer.

``ModelSynthesizer`` asks a small model on the coordinator (any InferenceBackend) and
streams its tokens; ``TemplateSynthesizer`` joins the results with a plain template. A
one-chunk query needs no merging: its result is the answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from typing import Protocol

from dellm.coordinator.config import SynthesisConfig
from dellm.coordinator.pipeline.answers import final_number
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import SYSTEM_PROMPT, concise_answer, synthesis_prompt
from dellm.coordinator.types import ChunkResult
from dellm.node.backends.base import BackendError, GenerationRequest, InferenceBackend, stream_generation

log = logging.getLogger(__name__)

_CONTENT_WORD = re.compile(r"[a-z]{4,}")


class Synthesizer(Protocol):
    label: str

    async def synthesize(
        self, query: str, results: Sequence[ChunkResult], emit_token: Callable[[str], None]
    ) -> tuple[str, str]:
        """The answer, and how it was made: "model:<name>", "template", "model:<name>+template"
        (the model's summary missed a step, so the step results follow it) or "single-chunk"."""
        ...


def template_answer(results: Sequence[ChunkResult]) -> str:
    if len(results) == 1:
        return results[0].answer.strip()
    return "\n".join(f"{r.chunk.text}: {concise_answer(r)}" for r in results)


def covers_results(answer: str, results: Sequence[ChunkResult]) -> bool:
    """Does a synthesized answer keep every step's result? A math step's number must appear as
    given; another step must share at least a third of its content words with the answer."""
    text = answer.lower()
    for result in results:
        value = final_number(result.answer) if result.chunk.operation is Operation.MATH_OP else None
        if value is not None:
            if f"{value:.12g}" not in text.replace(",", ""):
                return False
            continue
        words = set(_CONTENT_WORD.findall(result.answer.lower()))
        if words and len(words & set(_CONTENT_WORD.findall(text))) < len(words) / 3:
            return False
    return True


class TemplateSynthesizer:
    label = "template"

    async def synthesize(
        self, query: str, results: Sequence[ChunkResult], emit_token: Callable[[str], None]
    ) -> tuple[str, str]:
        answer = template_answer(results)
        emit_token(answer)
        return answer, "single-chunk" if len(results) == 1 else self.label


class ModelSynthesizer:
    """Merges with a small model; falls back to the template if the model fails or says nothing."""

    def __init__(self, backend: InferenceBackend, config: SynthesisConfig, lock: asyncio.Lock | None = None) -> None:
        self._backend = backend
        self._config = config
        self._lock = lock or asyncio.Lock()  # one generation at a time on this backend
        self.label = f"model:{backend.describe().model}"

    async def synthesize(
        self, query: str, results: Sequence[ChunkResult], emit_token: Callable[[str], None]
    ) -> tuple[str, str]:
        if len(results) == 1:
            return await TemplateSynthesizer().synthesize(query, results, emit_token)
        request = GenerationRequest(
            prompt=synthesis_prompt(query, results),
            system=SYSTEM_PROMPT,
            max_tokens=self._config.max_tokens,
            temperature=self._config.temperature,
        )
        parts: list[str] = []
        try:
            async for piece in stream_generation(self._backend, request, self._lock):
                if piece.text:
                    parts.append(piece.text)
                    emit_token(piece.text)
        except BackendError as exc:
            log.warning("synthesis model failed (%s); using the template", exc)
        answer = "".join(parts).strip()
        if answer and covers_results(answer, results):
            return answer, self.label
        if answer:
            log.info("synthesized answer dropped a step result; using the template")
        fallback = template_answer(results)
        if not answer:
            emit_token(fallback)
            return fallback, "template"
        # The model's text has already streamed: append the step results, so that what the
        # user saw and the final answer are the same text.
        addition = "\n\nStep results:\n" + fallback
        emit_token(addition)
        return ("".join(parts) + addition).strip(), f"{self.label}+template"
