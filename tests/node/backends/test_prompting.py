"""Prompt formatting and the stop-sequence filter shared by the model backends."""

from __future__ import annotations

from dellm.node.backends.base import GenerationRequest
from dellm.node.backends.prompting import (
    PLAIN_STOP_SEQUENCES,
    StopSequenceFilter,
    chat_messages,
    plain_prompt,
    stop_sequences,
)


def _feed_all(stops: tuple[str, ...], tokens: list[str]) -> tuple[list[str], bool, tuple[float, ...]]:
    """Feed tokens (logprob = -index-1) and return the released texts, stopped, all logprobs."""
    flt = StopSequenceFilter(stops)
    texts: list[str] = []
    logprobs: list[float] = []
    for index, token in enumerate(tokens):
        out = flt.feed(token, -float(index + 1))
        texts.append(out.text)
        logprobs.extend(out.logprobs)
        if out.stopped:
            return texts, True, tuple(logprobs)
    tail = flt.flush()
    texts.append(tail.text)
    logprobs.extend(tail.logprobs)
    return texts, False, tuple(logprobs)


def test_plain_prompt_and_stops() -> None:
    request = GenerationRequest("What is 2 + 2?", stop=("END",))
    assert plain_prompt(request) == "Question: What is 2 + 2?\nAnswer:"
    assert stop_sequences(request, instruct=False) == ("END", *PLAIN_STOP_SEQUENCES)
    assert stop_sequences(request, instruct=True) == ("END",)


def test_system_goes_first() -> None:
    request = GenerationRequest("Hi", system="Be brief.")
    assert plain_prompt(request) == "Be brief.\n\nQuestion: Hi\nAnswer:"
    assert chat_messages(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert chat_messages(GenerationRequest("Hi")) == [{"role": "user", "content": "Hi"}]


def test_text_without_stops_passes_through_token_by_token() -> None:
    texts, stopped, logprobs = _feed_all(("\n\n",), [" 1", "00", "."])
    assert texts == [" 1", "00", ".", ""]
    assert not stopped
    assert logprobs == (-1.0, -2.0, -3.0)


def test_a_stop_split_across_tokens_is_held_back_then_cut() -> None:
    texts, stopped, logprobs = _feed_all(("\nQuestion:",), [" 100", "\n", "Question", ":", " next"])
    assert "".join(texts) == " 100"
    assert texts[1] == ""  # the newline was held back while it could start a stop
    assert stopped
    assert logprobs == (-1.0,)


def test_a_false_alarm_is_released() -> None:
    texts, stopped, logprobs = _feed_all(("\n\n",), ["a", "\n", "b"])
    assert texts == ["a", "", "\nb", ""]
    assert not stopped
    assert logprobs == (-1.0, -2.0, -3.0)


def test_text_before_a_stop_inside_one_token_is_kept() -> None:
    texts, stopped, logprobs = _feed_all((",",), ["1", "2, 3"])
    assert "".join(texts) == "12"
    assert stopped
    assert logprobs == (-1.0, -2.0)


def test_empty_tokens_travel_with_the_next_text() -> None:
    texts, stopped, logprobs = _feed_all(("\n\n",), ["", "é"])
    assert texts == ["", "é", ""]
    assert logprobs == (-1.0, -2.0)
    assert not stopped
