"""Prompt formatting and stop-sequence handling shared by the model backends.

Instruct models (those whose GGUF carries a chat template) get the request as chat
messages; base models get a plain ``Question: ...\\nAnswer:`` completion prompt and stop
at the next question or a blank line. :class:`StopSequenceFilter` turns a stream of
decoded tokens into pieces that never show any part of a stop sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dellm.node.backends.base import GenerationRequest

#: Stop sequences for the plain completion prompt: the model starting a new question,
#: or ending its answer paragraph.
PLAIN_STOP_SEQUENCES: tuple[str, ...] = ("\nQuestion:", "\nAnswer:", "\n\n")

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"


def plain_prompt(request: GenerationRequest) -> str:
    """The completion prompt for a base (non-instruct) model.

    Few-shot examples come first as ``Question: ...\nAnswer: ...`` blocks, each ended by a
    blank line (the plain stop sequence), so the model sees where an answer ends.
    """
    blocks = [f"Question: {p.strip()}\nAnswer: {plain_example_answer(a)}\n\n" for p, a in request.examples]
    prompt = "".join(blocks) + f"Question: {request.prompt.strip()}\nAnswer:"
    if request.system:
        return f"{request.system.strip()}\n\n{prompt}"
    return prompt


def plain_example_answer(answer: str) -> str:
    """An example answer fit for a plain block: no doubled ``Answer:`` label, no blank lines inside."""
    text = answer.strip()
    if text.startswith("Answer:"):
        text = text.removeprefix("Answer:").lstrip()
    return re.sub(r"\n\s*\n", "\n", text)


def chat_messages(request: GenerationRequest) -> list[dict[str, str]]:
    """The request as chat messages: ``system`` first when given, then each few-shot example
    as a user turn and an assistant turn, then the prompt."""
    messages: list[dict[str, str]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for prompt, answer in request.examples:
        messages.append({"role": "user", "content": prompt})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": request.prompt})
    return messages


def stop_sequences(request: GenerationRequest, *, instruct: bool) -> tuple[str, ...]:
    """The request's stop sequences, plus the plain-prompt ones for base models."""
    extra = () if instruct else PLAIN_STOP_SEQUENCES
    return tuple(dict.fromkeys(s for s in (*request.stop, *extra) if s))


@dataclass(frozen=True)
class FilteredText:
    """Text released by :class:`StopSequenceFilter`, with the logprobs of its tokens."""

    text: str
    logprobs: tuple[float, ...]
    stopped: bool = False


class StopSequenceFilter:
    """Holds back text that could be the start of a stop sequence.

    Feed it one decoded token at a time. Tokens are released whole once they can no
    longer be part of a stop sequence; when a stop sequence appears, the text before it
    is released (with the logprobs of the tokens that contributed to that text) and the
    filter reports ``stopped``. Tokens with empty text (special tokens, or the first bytes
    of a multi-byte character) travel with the next text.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending: list[tuple[str, float]] = []

    def feed(self, text: str, logprob: float) -> FilteredText:
        self._pending.append((text, logprob))
        joined = "".join(t for t, _ in self._pending)
        cut = self._earliest_stop(joined)
        if cut is not None:
            logprobs: list[float] = []
            start = 0
            for token_text, token_logprob in self._pending:
                if start >= cut and token_text:
                    break
                logprobs.append(token_logprob)
                start += len(token_text)
            self._pending.clear()
            return FilteredText(joined[:cut], tuple(logprobs), stopped=True)
        boundary = len(joined) - self._partial_stop_length(joined)
        released: list[tuple[str, float]] = []
        end = 0
        for token_text, token_logprob in self._pending:
            if end + len(token_text) > boundary:
                break
            end += len(token_text)
            released.append((token_text, token_logprob))
        del self._pending[: len(released)]
        return FilteredText("".join(t for t, _ in released), tuple(lp for _, lp in released))

    def flush(self) -> FilteredText:
        """Release everything held back (the generation ended without a stop sequence)."""
        released = FilteredText("".join(t for t, _ in self._pending), tuple(lp for _, lp in self._pending))
        self._pending.clear()
        return released

    def _earliest_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_stop_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
