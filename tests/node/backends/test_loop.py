"""pieces_from_steps: the generate loop both model backends share, driven by scripted steps (no model)."""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import pytest

from dellm.node.backends.base import BackendError, GenerationRequest, TokenPiece
from dellm.node.backends.loop import END_OF_GENERATION, ContextRoom, GenerationStep, pieces_from_steps

ROOMY = ContextRoom(prompt_tokens=10, context_size=4096)


@dataclass
class ScriptedSteps:
    """A test double for a backend's step producer: yields ``steps`` in order (logprob = -index-1
    unless given), records how many were taken and whether the loop closed it, and can set
    ``cancel`` once a given number of steps have been taken."""

    steps: Sequence[GenerationStep | str]
    cancel_after: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    taken: int = 0
    started: bool = False
    closed: bool = False

    def run(self) -> Generator[GenerationStep, None, None]:
        self.started = True
        try:
            for index, step in enumerate(self.steps):
                if self.cancel_after is not None and index >= self.cancel_after:
                    self.cancel.set()
                self.taken += 1
                yield GenerationStep(step, -float(index + 1)) if isinstance(step, str) else step
        finally:
            self.closed = True


def _generate(
    source: ScriptedSteps, request: GenerationRequest, room: ContextRoom = ROOMY, *, instruct: bool = True
) -> list[TokenPiece]:
    return list(pieces_from_steps(source.run(), request, source.cancel, room, instruct=instruct, model_name="fake"))


def _text(pieces: list[TokenPiece]) -> str:
    return "".join(p.text for p in pieces)


def _logprobs(pieces: list[TokenPiece]) -> list[float]:
    return [lp for p in pieces for lp in p.logprobs]


def test_every_piece_but_the_last_has_no_finish_reason() -> None:
    source = ScriptedSteps(["The", " answer", " is", " 4", ".", END_OF_GENERATION])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16))
    assert [p.text for p in pieces] == ["The", " answer", " is", " 4", ".", ""]
    assert [p.finish_reason for p in pieces] == [None] * 5 + ["stop"]
    assert _logprobs(pieces) == [-1.0, -2.0, -3.0, -4.0, -5.0]


def test_end_of_generation_stops_and_flushes_the_held_back_text() -> None:
    # "\n" could start the plain prompt's "\n\n" stop: it is held back, then released at the end.
    source = ScriptedSteps([" Paris", ".", "\n", END_OF_GENERATION, "never read"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16), instruct=False)
    assert pieces[-1] == TokenPiece("\n", (-3.0,), finish_reason="stop")
    assert _text(pieces) == " Paris.\n"
    assert source.taken == 4 and source.closed


def test_a_stop_sequence_split_across_steps_is_held_back_then_cut() -> None:
    source = ScriptedSteps([" 100", "\n", "Question", ":", " next"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16, stop=("\nQuestion:",)))
    assert pieces == [TokenPiece(" 100", (-1.0,)), TokenPiece("", finish_reason="stop")]
    assert source.taken == 4 and source.closed  # the step after the stop is never asked for


def test_text_before_a_stop_inside_one_step_is_kept_with_its_logprob() -> None:
    source = ScriptedSteps(["1", "2, 3", "4"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16, stop=(",",)))
    assert _text(pieces) == "12"
    assert _logprobs(pieces) == [-1.0, -2.0]
    assert pieces[-1] == TokenPiece("", finish_reason="stop")


def test_base_models_also_stop_at_the_plain_prompt_stops() -> None:
    steps = [" Paris", "\n", "\n", "Question: more"]
    instruct = _generate(ScriptedSteps(steps), GenerationRequest("q", max_tokens=16), instruct=True)
    base = _generate(ScriptedSteps(steps), GenerationRequest("q", max_tokens=16), instruct=False)
    assert _text(instruct) == " Paris\n\nQuestion: more"
    assert instruct[-1].finish_reason == "length"  # the steps ran out
    assert _text(base) == " Paris"
    assert base[-1] == TokenPiece("", finish_reason="stop")


def test_cancel_mid_stream_ends_with_an_empty_cancelled_piece() -> None:
    # Cancelled while "\n" is held back: held-back text is dropped, not flushed.
    source = ScriptedSteps(["a", "b", "\n", "c", "d"], cancel_after=3)
    pieces = _generate(source, GenerationRequest("q", max_tokens=16), instruct=False)
    assert pieces == [TokenPiece("a", (-1.0,)), TokenPiece("b", (-2.0,)), TokenPiece("", finish_reason="cancelled")]
    assert source.taken == 4 and source.closed


def test_cancel_before_the_start_never_starts_the_model() -> None:
    source = ScriptedSteps(["a"])
    source.cancel.set()
    assert _generate(source, GenerationRequest("q")) == [TokenPiece("", finish_reason="cancelled")]
    assert not source.started


def test_max_tokens_cuts_the_steps_and_ends_with_length() -> None:
    source = ScriptedSteps(["one", " two", " three", " four", " five"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=3))
    assert _text(pieces) == "one two three"
    assert _logprobs(pieces) == [-1.0, -2.0, -3.0]
    assert pieces[-1] == TokenPiece("", finish_reason="length")
    assert source.taken == 3 and source.closed


def test_running_out_of_steps_ends_with_length_and_flushes() -> None:
    source = ScriptedSteps(["a", "\n"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16), instruct=False)
    assert pieces == [TokenPiece("a", (-1.0,)), TokenPiece("\n", (-2.0,), finish_reason="length")]


def test_the_final_flush_adds_what_the_decoder_still_holds() -> None:
    # The second step is the first byte of a two-byte character: its text is held back by the decoder.
    source = ScriptedSteps(["caf", GenerationStep("", -2.0, held_back="\ufffd"), "never read"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=2))
    assert pieces[-1] == TokenPiece("\ufffd", finish_reason="length")
    assert _text(pieces) == "caf\ufffd"
    assert _logprobs(pieces) == [-1.0, -2.0]  # the empty step's logprob went out as soon as it came


def test_what_the_decoder_holds_is_dropped_on_a_stop_sequence_or_cancel() -> None:
    held = GenerationStep("", -2.0, held_back="\ufffd")
    stopped = _generate(ScriptedSteps(["a", held, "!"]), GenerationRequest("q", stop=("!",)))
    assert stopped[-1] == TokenPiece("", finish_reason="stop")
    assert _logprobs(stopped) == [-1.0, -2.0]  # the empty step's logprob is still reported
    cancelled = _generate(ScriptedSteps(["a", held, "b"], cancel_after=2), GenerationRequest("q"))
    assert _text(cancelled) == "a" and cancelled[-1].finish_reason == "cancelled"


def test_the_end_of_generation_step_adds_no_text_or_logprob() -> None:
    source = ScriptedSteps(["a", GenerationStep("", -2.0, held_back="\ufffd"), END_OF_GENERATION])
    pieces = _generate(source, GenerationRequest("q", max_tokens=16))
    assert pieces[-1] == TokenPiece("\ufffd", finish_reason="stop")
    assert _text(pieces) == "a\ufffd"
    assert _logprobs(pieces) == [-1.0, -2.0]


def test_a_prompt_that_fills_the_context_is_an_error() -> None:
    source = ScriptedSteps(["a"])
    with pytest.raises(BackendError, match="prompt of 512 tokens does not fit the context of 512"):
        _generate(source, GenerationRequest("q"), ContextRoom(prompt_tokens=512, context_size=512))
    assert not source.started


def test_the_context_room_cuts_max_tokens() -> None:
    source = ScriptedSteps(["a", "b", "c", "d"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=100), ContextRoom(prompt_tokens=510, context_size=512))
    assert _text(pieces) == "ab"
    assert pieces[-1].finish_reason == "length"


def test_an_unknown_context_size_leaves_max_tokens_as_the_room() -> None:
    room = ContextRoom(prompt_tokens=100_000, context_size=0)
    assert room.token_budget(GenerationRequest("q", max_tokens=7)) == 7
    with pytest.raises(BackendError, match="does not fit the context of 0"):
        room.token_budget(GenerationRequest("q", max_tokens=0))


def test_no_budget_ends_with_length_before_the_model_starts() -> None:
    source = ScriptedSteps(["a"])
    pieces = _generate(source, GenerationRequest("q", max_tokens=0))
    assert pieces == [TokenPiece("", finish_reason="length")]
    assert not source.started


def test_a_failing_producer_raises_through_the_loop_after_the_text_so_far() -> None:
    def failing() -> Generator[GenerationStep, None, None]:
        yield GenerationStep("a", -1.0)
        raise BackendError("fake: generation failed: boom")

    pieces: list[TokenPiece] = []
    with pytest.raises(BackendError, match="boom"):
        for piece in pieces_from_steps(failing(), GenerationRequest("q"), threading.Event(), ROOMY,
                                       instruct=True, model_name="fake"):
            pieces.append(piece)
    assert pieces == [TokenPiece("a", (-1.0,))]


def test_the_producer_is_closed_before_the_final_piece_is_yielded() -> None:
    source = ScriptedSteps(["a", "b", "c"])
    closed_at_final: list[bool] = []
    for piece in pieces_from_steps(source.run(), GenerationRequest("q", max_tokens=2), source.cancel, ROOMY,
                                   instruct=True, model_name="fake"):
        if piece.finish_reason is not None:
            closed_at_final.append(source.closed)
    assert closed_at_final == [True]  # a backend's model (thread) has stopped before the caller hears "done"


def test_closing_the_pieces_early_closes_the_producer() -> None:
    source = ScriptedSteps(["a", "b", "c"])
    pieces = pieces_from_steps(source.run(), GenerationRequest("q"), source.cancel, ROOMY, instruct=True,
                               model_name="fake")
    assert next(pieces) == TokenPiece("a", (-1.0,))
    pieces.close()
    assert source.closed
