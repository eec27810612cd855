"""stream_generation: a backend's pieces on the event loop, in order, merged only when already waiting."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece, stream_generation

WORDS = ["The", " answer", " is", " 4", "."]


class GatedBackend:
    """A test double: yields each word when the test opens its gate (or all at once when ungated)."""

    def __init__(self, gated: bool, fail_after: int | None = None) -> None:
        self.gates = [threading.Event() for _ in WORDS]
        if not gated:
            for gate in self.gates:
                gate.set()
        self.fail_after = fail_after

    def describe(self) -> BackendDescription:
        return BackendDescription("scripted", "gated")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        for i, (word, gate) in enumerate(zip(WORDS, self.gates, strict=True)):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("the model fell over")
            gate.wait(5)
            yield TokenPiece(word, (-0.1 * (i + 1),))
        yield TokenPiece("", (), "stop")

    def close(self) -> None:
        pass


async def test_pieces_that_wait_are_merged_without_losing_text_logprobs_or_order() -> None:
    backend = GatedBackend(gated=False)
    await asyncio.sleep(0)
    pieces = [p async for p in stream_generation(backend, GenerationRequest("q"), asyncio.Lock())]

    assert "".join(p.text for p in pieces) == "".join(WORDS)
    assert [lp for p in pieces for lp in p.logprobs] == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
    assert pieces[-1].finish_reason == "stop"
    assert all(p.finish_reason is None for p in pieces[:-1])


async def test_a_piece_is_never_held_back_for_the_next_one() -> None:
    backend = GatedBackend(gated=True)
    stream = stream_generation(backend, GenerationRequest("q"), asyncio.Lock())
    seen = []
    for gate, word in zip(backend.gates, WORDS, strict=True):
        gate.set()
        piece = await asyncio.wait_for(anext(stream), 5)  # arrives while the next word is still gated
        seen.append(piece.text)
        assert piece.text == word
    finish = piece.finish_reason or (await anext(stream)).finish_reason  # the last word may carry the stop
    await stream.aclose()
    assert (seen, finish) == (WORDS, "stop")


async def test_an_error_after_merged_pieces_still_surfaces() -> None:
    backend = GatedBackend(gated=False, fail_after=3)
    text = []
    with pytest.raises(BackendError, match="fell over"):
        async for piece in stream_generation(backend, GenerationRequest("q"), asyncio.Lock()):
            text.append(piece.text)
    assert "".join(text) == "".join(WORDS[:3])
