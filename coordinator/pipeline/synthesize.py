"""Stage 5: merge the chunk results into one coherent answer.

``ModelSynthesizer`` asks a small model on the coordinator (any InferenceBackend) and
streams its tokens; ``TemplateSynthesizer`` joins the results with a plain template. A
one-chunk query needs no merging: its result is the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from coordinator.config import SynthesisConfig
from coordinator.types import ChunkResult
from node.backends.base import BackendError, GenerationRequest, InferenceBackend, stream_generation

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You combine the results of several steps into one short, coherent answer to the user's question. "
    "Use the given results, keep every number exactly as given, and do not add steps."
)


class Synthesizer(Protocol):
    label: str

    async def synthesize(
        self, query: str, results: Sequence[ChunkResult], emit_token: Callable[[str], None]
    ) -> tuple[str, str]:
        """The answer, and how it was made: "model:<name>", "template" or "single-chunk"."""
        ...


def template_answer(results: Sequence[ChunkResult]) -> str:
    if len(results) == 1:
        return results[0].answer.strip()
    return "\n".join(f"{r.chunk.text}: {r.answer.strip()}" for r in results)


def synthesis_prompt(query: str, results: Sequence[ChunkResult]) -> str:
    steps = "\n".join(f"{i}. {r.chunk.text}\n   Result: {r.answer.strip()}" for i, r in enumerate(results, 1))
    return f"Question: {query}\n\nStep results:\n{steps}\n\nWrite the final answer to the question."


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

    def __init__(self, backend: InferenceBackend, config: SynthesisConfig) -> None:
        self._backend = backend
        self._config = config
        self._lock = asyncio.Lock()
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
        if answer:
            return answer, self.label
        fallback = template_answer(results)
        emit_token(("\n" if parts else "") + fallback)
        return fallback, "template"
