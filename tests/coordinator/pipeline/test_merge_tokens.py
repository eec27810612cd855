"""Token events waiting together are sent as one: same text, same order, other events untouched."""

from __future__ import annotations

from dellm.coordinator.pipeline.answer import merge_tokens
from dellm.coordinator.types import AnswerToken, ChunkToken, PipelineEvent


def test_consecutive_tokens_of_one_stream_merge() -> None:
    events: list[PipelineEvent | None] = [ChunkToken("c1", "a", "The"), ChunkToken("c1", "a", " answer"),
                                          ChunkToken("c1", "a", " is 4")]
    assert merge_tokens(events) == [ChunkToken("c1", "a", "The answer is 4", tokens=3)]


def test_tokens_of_different_streams_stay_apart_and_in_order() -> None:
    events: list[PipelineEvent | None] = [
        ChunkToken("c1", "a", "1"), ChunkToken("c1", "b", "2"), ChunkToken("c1", "b", "3"), ChunkToken("c2", "b", "4"),
        ChunkToken("c1", "a", "5"), AnswerToken("x"), AnswerToken("y"), None,
    ]
    assert merge_tokens(events) == [
        ChunkToken("c1", "a", "1"), ChunkToken("c1", "b", "23", tokens=2), ChunkToken("c2", "b", "4"),
        ChunkToken("c1", "a", "5"), AnswerToken("xy"), None,
    ]


def test_other_events_are_never_merged_or_moved() -> None:
    marker = AnswerToken("end")
    events: list[PipelineEvent | None] = [ChunkToken("c1", "a", "1"), None, ChunkToken("c1", "a", "2"), marker]
    assert merge_tokens(events) == events
