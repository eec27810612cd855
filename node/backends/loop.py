"""The generate loop shared by the model backends.

A backend turns its model's output into :class:`GenerationStep` s (a decoded text piece,
its logprob, or the end of generation) and hands them, with the request, to
:func:`pieces_from_steps`. The loop owns everything else: the context check, the cancel
check, the stop-sequence filter, the max-tokens cut and the final flush, so every backend
ends a generation the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass

from dellm.node.backends.base import BackendError, GenerationRequest, TokenPiece
from dellm.node.backends.prompting import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    StopSequenceFilter,
    stop_sequences,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationStep:
    """One token of the model's output, as the backend decoded it.

    ``text`` may be empty (a special token, or the first bytes of a multi-byte
    character). ``held_back`` is text the backend's decoder still holds after this token
    (an incomplete character): it is released only if the generation ends right here
    without a stop sequence. ``end`` marks the model's end-of-generation token, whose
    text and logprob are not part of the answer.
    """

    text: str
    logprob: float
    end: bool = False
    held_back: str = ""


#: The step a backend yields for its model's end-of-generation token.
END_OF_GENERATION = GenerationStep("", 0.0, end=True)


@dataclass(frozen=True)
class ContextRoom:
    """How much of the model's context a prompt leaves for the answer."""

    prompt_tokens: int
    context_size: int  # 0: not known; the request's max_tokens is then the room

    def token_budget(self, request: GenerationRequest) -> int:
        """The most tokens the answer may take: ``request.max_tokens``, cut to the room left.

        Raises :class:`BackendError` when the prompt alone fills the context.
        """
        room = self.context_size - self.prompt_tokens if self.context_size else request.max_tokens
        if room <= 0:
            raise BackendError(
                f"prompt of {self.prompt_tokens} tokens does not fit the context of {self.context_size}"
            )
        return min(request.max_tokens, room)


@dataclass(frozen=True)
class _Outcome:
    """How the step loop ended: the finish reason, and what the final piece may still release."""

    finish_reason: str
    hit_stop_sequence: bool
    held_back: str


def pieces_from_steps(
    steps: Generator[GenerationStep, None, None],
    request: GenerationRequest,
    cancel: threading.Event,
    room: ContextRoom,
    *,
    instruct: bool,
    model_name: str,
) -> Generator[TokenPiece, None, None]:
    """Turn a backend's steps into the pieces of one generation, the last one with its finish reason.

    ``steps`` must be lazy (a generator that starts the model on its first ``next``): it
    is not started when the prompt leaves no budget or ``cancel`` is already set, and it
    is closed (the model stopped) before the final piece is yielded. Stop sequences are
    the request's, plus the plain-prompt ones unless ``instruct``. Raises
    :class:`BackendError` when the prompt does not fit ``room``.
    """
    max_tokens = room.token_budget(request)
    if max_tokens <= 0:
        steps.close()
        yield TokenPiece("", finish_reason=FINISH_LENGTH)
        return
    if cancel.is_set():
        steps.close()
        yield TokenPiece("", finish_reason=FINISH_CANCELLED)
        return
    stops = StopSequenceFilter(stop_sequences(request, instruct=instruct))
    outcome = yield from _run_steps(
        steps, stops, cancel, max_tokens, model_name=model_name, prompt_tokens=room.prompt_tokens
    )
    if outcome.finish_reason == FINISH_CANCELLED or outcome.hit_stop_sequence:
        yield TokenPiece("", finish_reason=outcome.finish_reason)
        return
    tail = stops.flush()
    yield TokenPiece(tail.text + outcome.held_back, tail.logprobs, finish_reason=outcome.finish_reason)


def _run_steps(
    steps: Generator[GenerationStep, None, None],
    stops: StopSequenceFilter,
    cancel: threading.Event,
    max_tokens: int,
    *,
    model_name: str,
    prompt_tokens: int,
) -> Generator[TokenPiece, None, _Outcome]:
    """Yield the filtered text of each step until the model ends, a stop sequence appears,
    ``cancel`` is set or ``max_tokens`` steps are taken; close ``steps`` and say how it ended."""
    finish, hit_stop_sequence, held_back = FINISH_LENGTH, False, ""
    produced = 0
    started = time.monotonic()
    try:
        for step in steps:
            if cancel.is_set():
                finish = FINISH_CANCELLED
                break
            produced += 1
            if step.end:
                finish = FINISH_STOP
                break
            held_back = step.held_back
            released = stops.feed(step.text, step.logprob)
            if released.text or released.logprobs:
                yield TokenPiece(released.text, released.logprobs)
            if released.stopped:
                finish, hit_stop_sequence = FINISH_STOP, True
                break
            if produced >= max_tokens:
                break
    finally:
        steps.close()
        logger.debug(
            "%s: %d prompt tokens, %d generated in %.2fs",
            model_name,
            prompt_tokens,
            produced,
            time.monotonic() - started,
        )
    return _Outcome(finish, hit_stop_sequence, held_back)
