"""Stage 3 (dispatch): retries, hedging, early settling and in-flight counts, driven by a fake connector.

No network: ``FakeNodeConnector`` streams each node's script (pieces, pauses, failures) in-process,
and the timeouts in ``CONFIG`` are small, so every test runs in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest

from dellm.coordinator.config import DispatchConfig, RouteConfig
from dellm.coordinator.errors import NodeCallError, NoNodesAvailableError
from dellm.coordinator.pipeline.dispatch import ChunkDispatch, DispatchOutcome, stream_answer, usual_wait_ms
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.types import (
    Assignment,
    Chunk,
    ChunkAssigned,
    ChunkRequest,
    ChunkToken,
    NodeAnswer,
    NodeRecord,
    PipelineEvent,
    StreamPiece,
)
from dellm.protos.wire import NodeDescription

ROUTE = RouteConfig(exploration="none")  # deterministic: the fastest untried node is always next
# No hedging unless a test asks for it (hedge_min_s), and deadlines short enough to hit on purpose.
CONFIG = DispatchConfig(first_token_timeout_s=0.2, answer_timeout_s=0.3, hedge_min_s=5.0)
HEDGING = replace(CONFIG, hedge_min_s=0.05, first_token_timeout_s=1.0)
LOW = Chunk("c1", Operation.MATH_OP, "What is 2 + 2?", 6, 0.1)  # one node
HIGH = Chunk("c1", Operation.MATH_OP, "What is 2 + 2?", 6, 0.8)  # two nodes
REQUEST = ChunkRequest("q1", "c1", Operation.MATH_OP, "What is 2 + 2?", 16, 0.0)


# --- the fake connector ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Failure:
    code: str = "UNAVAILABLE"
    details: str = "connection reset"


Step = StreamPiece | Pause | Failure
SILENCE = Pause(3600.0)  # never yields again: only a deadline or a cancellation ends it


def piece(text: str, *logprobs: float) -> StreamPiece:
    return StreamPiece(text, logprobs or (-0.1,))


def final(text: str = "", *logprobs: float, confidence: float = 0.0) -> StreamPiece:
    return StreamPiece(text, logprobs, done=True, finish_reason="stop", confidence=confidence)


def answers(text: str, after_s: float = 0.0) -> tuple[Step, ...]:
    """A script that waits ``after_s``, then streams ``text`` word by word and finishes."""
    words = [word + " " for word in text.split()]
    words[-1] = words[-1].rstrip()
    return (Pause(after_s), *(piece(word) for word in words), final())


class FakeNodeConnector:
    """A ``NodeConnector`` test double: each node streams its script of pieces, pauses and failures.

    It records the order nodes were called in, how many pieces each one was asked for, which streams
    were interrupted (cancelled, or stopped by a deadline) and, when given the dispatch's in-flight
    counts, what they were when each node was called.
    """

    def __init__(self, scripts: Mapping[str, Sequence[Step]], in_flight: Mapping[str, int] | None = None) -> None:
        self._scripts = dict(scripts)
        self._in_flight = in_flight
        self.calls: list[str] = []
        self.yielded: dict[str, int] = {}
        self.interrupted: list[str] = []
        self.in_flight_at_call: dict[str, int] = {}

    async def stream(self, node: NodeRecord, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]:
        node_id = node.node_id
        self.calls.append(node_id)
        self.yielded[node_id] = 0
        if self._in_flight is not None:
            self.in_flight_at_call[node_id] = self._in_flight.get(node_id, 0)
        try:
            for step in self._scripts[node_id]:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Failure):
                    raise NodeCallError(node_id, step.code, step.details)
                else:
                    self.yielded[node_id] += 1
                    yield step
        except asyncio.CancelledError:
            self.interrupted.append(node_id)
            raise


# --- running one dispatch -------------------------------------------------------------------------


def node(node_id: str, latency_ms: float = 100.0) -> NodeRecord:
    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1"), latency_ms=latency_ms)


@dataclass
class Dispatched:
    """What one dispatch left behind."""

    outcome: DispatchOutcome
    events: list[PipelineEvent]
    recorded: list[NodeAnswer]  # what on_answer was given, in order
    in_flight: dict[str, int]
    connector: FakeNodeConnector
    settled_calls: list[list[str]] = field(default_factory=list)

    @property
    def assignments(self) -> list[Assignment]:
        return [event.assignment for event in self.events if isinstance(event, ChunkAssigned)]

    @property
    def answered(self) -> list[tuple[str, str | None]]:
        return [(answer.node_id, answer.error) for answer in self.outcome.answers]


async def dispatch(
    scripts: Mapping[str, Sequence[Step]],
    *,
    nodes: Sequence[NodeRecord] | None = None,
    chunk: Chunk = LOW,
    config: DispatchConfig = CONFIG,
    settled: Callable[[Sequence[NodeAnswer]], bool] | None = None,
    in_flight: dict[str, int] | None = None,
    route: RouteConfig = ROUTE,
) -> Dispatched:
    """Dispatch ``chunk`` to nodes scripted by ``scripts``; by default the nodes are ranked in the
    scripts' order (the first is the fastest)."""
    records = nodes if nodes is not None else [node(n, 100.0 * (i + 1)) for i, n in enumerate(scripts)]
    table = NodeTable(records)
    counts = in_flight if in_flight is not None else {}
    connector = FakeNodeConnector(scripts, counts)
    events: list[PipelineEvent] = []
    recorded: list[NodeAnswer] = []
    settled_calls: list[list[str]] = []

    def settles(so_far: Sequence[NodeAnswer]) -> bool:
        settled_calls.append([answer.node_id for answer in so_far])
        return settled is not None and settled(so_far)

    async with asyncio.timeout(2.0):  # a hang fails the test, not the run
        outcome = await ChunkDispatch(
            chunk, REQUEST, nodes=lambda: table, in_flight=counts, connector=connector, route_config=route,
            config=config, emit=events.append, on_answer=recorded.append,
            settled=settles if settled is not None else None,
        ).run()
    return Dispatched(outcome, events, recorded, counts, connector, settled_calls)


def busy(in_flight: Mapping[str, int]) -> dict[str, int]:
    return {node_id: count for node_id, count in in_flight.items() if count}


def one_good(answers_so_far: Sequence[NodeAnswer]) -> bool:
    return any(not answer.failed for answer in answers_so_far)


# --- one node, no trouble -------------------------------------------------------------------------


async def test_events_come_in_order_assignment_first_then_a_token_per_piece() -> None:
    run = await dispatch({"a": answers("2 + 2 = 4")})

    assert run.events == [
        ChunkAssigned(Assignment("c1", ("a",))),
        ChunkToken("c1", "a", "2 ", 1),
        ChunkToken("c1", "a", "+ ", 1),
        ChunkToken("c1", "a", "2 ", 1),
        ChunkToken("c1", "a", "= ", 1),
        ChunkToken("c1", "a", "4", 1),
    ]
    [answer] = run.outcome.answers
    assert (answer.node_id, answer.text, answer.error, answer.finish_reason) == ("a", "2 + 2 = 4", None, "stop")
    assert answer.tokens == 5 and answer.confidence == pytest.approx(math.exp(-0.1))
    assert answer.first_token_ms is not None and answer.latency_ms >= answer.first_token_ms
    assert run.recorded == run.outcome.answers
    assert run.outcome.cancelled == ()
    assert run.connector.calls == ["a"]


async def test_in_flight_counts_are_held_while_streaming_and_return_to_where_they_started() -> None:
    before = {"elsewhere": 3}  # another chunk's work: left alone
    run = await dispatch({"a": answers("4"), "b": answers("4")}, chunk=HIGH, in_flight=dict(before))

    assert run.connector.in_flight_at_call == {"a": 1, "b": 1}
    assert busy(run.in_flight) == before


async def test_a_token_event_carries_its_piece_s_token_count() -> None:
    run = await dispatch({"a": (StreamPiece("2 + 2", (-0.1, -0.2, -0.3)), final(" = 4", -0.1))})

    tokens = [event for event in run.events if isinstance(event, ChunkToken)]
    assert tokens == [ChunkToken("c1", "a", "2 + 2", 3), ChunkToken("c1", "a", " = 4", 1)]
    assert run.outcome.answers[0].tokens == 4


# --- a node fails: its slot moves on to the next best node ----------------------------------------

_CUT_OFF = "cut off: streamed more than 3 messages or 65536 bytes"


@pytest.mark.parametrize(
    ("script", "error", "partial"),
    [
        pytest.param((Failure(),), "UNAVAILABLE: connection reset", "", id="fails-before-first-token"),
        pytest.param((piece("2 + "), Failure("INTERNAL", "model crashed")), "INTERNAL: model crashed", "2 + ",
                     id="fails-mid-stream"),
        pytest.param((SILENCE,), "no first token before the deadline", "", id="first-token-deadline"),
        pytest.param((piece("2 + "), SILENCE), "timed out", "2 + ", id="stalls-after-first-token"),
        pytest.param((piece("2 + "), piece("2")), "stream ended without a final message", "2 + 2",
                     id="ends-without-final-message"),
        pytest.param((final("  "),), "empty answer", "  ", id="empty-answer"),
        pytest.param(tuple(piece("x") for _ in range(100)), _CUT_OFF, "xxx", id="floods-past-piece-bound"),
    ],
)
async def test_a_failed_node_is_recorded_and_its_slot_retries_the_next_best(
    script: tuple[Step, ...], error: str, partial: str
) -> None:
    run = await dispatch({"a": script, "b": answers("4"), "c": answers("4")}, config=replace(CONFIG,
                         max_answer_pieces=3))

    failed, good = run.outcome.answers
    assert (failed.node_id, failed.error, failed.text) == ("a", error, partial)
    assert (failed.first_token_ms is None) == (partial == "")
    assert (good.node_id, good.text, good.error) == ("b", "4", None)
    assert run.assignments == [
        Assignment("c1", ("a",)),
        Assignment("c1", ("b",), retry=True, reason=f"a failed: {error}"),
    ]
    assert run.recorded == run.outcome.answers
    assert run.connector.calls == ["a", "b"]
    assert busy(run.in_flight) == {}


async def test_the_partial_text_of_a_failed_node_was_streamed_as_it_arrived() -> None:
    run = await dispatch({"a": (piece("2 + "), Failure()), "b": answers("4")})

    assert run.events[:2] == [ChunkAssigned(Assignment("c1", ("a",))), ChunkToken("c1", "a", "2 + ", 1)]
    assert isinstance(run.events[2], ChunkAssigned) and run.events[2].assignment.retry


async def test_the_answer_size_bound_cuts_a_flooding_node_off() -> None:
    flood = tuple(piece("x" * 100) for _ in range(1000))
    run = await dispatch({"a": flood, "b": answers("4")}, config=replace(CONFIG, max_answer_bytes=250))

    cut = run.outcome.answers[0]
    assert cut.error == "cut off: streamed more than 2048 messages or 250 bytes"
    assert cut.text == "x" * 200  # the third piece crossed the bound and was dropped
    assert run.connector.yielded["a"] == 3  # no more was read from it
    assert [answer.node_id for answer in run.outcome.answers] == ["a", "b"]


async def test_no_node_left_to_retry_leaves_the_failed_answer_alone() -> None:
    run = await dispatch({"a": (Failure(),)})

    assert run.answered == [("a", "UNAVAILABLE: connection reset")]
    assert run.assignments == [Assignment("c1", ("a",))]
    assert busy(run.in_flight) == {}


async def test_every_node_fails_gives_every_failed_answer_and_no_exception() -> None:
    scripts = {"a": (Failure(),), "b": (piece("x"), Failure()), "c": (SILENCE,)}
    run = await dispatch(scripts, chunk=HIGH)

    assert sorted(run.answered) == [
        ("a", "UNAVAILABLE: connection reset"),
        ("b", "UNAVAILABLE: connection reset"),
        ("c", "no first token before the deadline"),
    ]
    assert run.assignments[0] == Assignment("c1", ("a", "b"))
    assert [a.node_ids for a in run.assignments[1:]] == [("c",)]  # one retry: then no node was left
    assert run.outcome.cancelled == ()
    assert busy(run.in_flight) == {}


async def test_a_slot_tries_at_most_max_attempts_nodes() -> None:
    scripts = {node_id: (Failure(),) for node_id in "abcdef"}
    run = await dispatch(scripts, config=replace(CONFIG, max_attempts=3))

    assert [answer.node_id for answer in run.outcome.answers] == ["a", "b", "c"]
    assert [a.node_ids for a in run.assignments] == [("a",), ("b",), ("c",)]  # no node routed and left unused
    assert run.connector.calls == ["a", "b", "c"]
    assert busy(run.in_flight) == {}


async def test_no_live_node_raises_before_anything_is_emitted_or_counted() -> None:
    counts: dict[str, int] = {}
    events: list[PipelineEvent] = []

    with pytest.raises(NoNodesAvailableError, match="chunk c1"):
        await ChunkDispatch(
            LOW, REQUEST, nodes=lambda: NodeTable(), in_flight=counts, connector=FakeNodeConnector({}),
            route_config=ROUTE, config=CONFIG, emit=events.append, on_answer=lambda answer: None,
        ).run()
    assert events == [] and counts == {}


# --- hedging: a slow node gets a second node racing it --------------------------------------------


async def test_a_hedge_wins_and_the_slow_node_is_cancelled() -> None:
    nodes = [node("slow", 10.0), node("hedge", 20.0)]  # usual times far below hedge_min_s: hedged at 0.05 s
    run = await dispatch({"slow": answers("4", after_s=1.0), "hedge": answers("4")}, nodes=nodes, config=HEDGING)

    assert run.answered == [("hedge", None)]  # the cancelled node's answer is never recorded
    assert run.outcome.cancelled == ("slow",)
    assert run.connector.interrupted == ["slow"]
    [first, hedge] = run.assignments
    assert first == Assignment("c1", ("slow",))
    assert hedge.node_ids == ("hedge",) and hedge.retry and hedge.reason.startswith("hedge: slow is slower than")
    assert busy(run.in_flight) == {}


async def test_a_hedge_loses_when_the_original_answers_first_and_is_cancelled() -> None:
    nodes = [node("slowish", 10.0), node("hedge", 20.0)]
    scripts = {"slowish": answers("4", after_s=0.2), "hedge": answers("4", after_s=1.0)}
    run = await dispatch(scripts, nodes=nodes, config=HEDGING)

    assert run.answered == [("slowish", None)]
    assert run.outcome.cancelled == ("hedge",)
    assert run.connector.interrupted == ["hedge"]
    assert [a.node_ids for a in run.assignments] == [("slowish",), ("hedge",)]
    assert busy(run.in_flight) == {}


async def test_a_hedged_node_that_fails_is_recorded_and_the_hedge_answers() -> None:
    nodes = [node("slow", 10.0), node("hedge", 20.0)]
    scripts = {"slow": (Pause(0.2), Failure()), "hedge": answers("4", after_s=0.3)}
    run = await dispatch(scripts, nodes=nodes, config=HEDGING)

    assert run.answered == [("slow", "UNAVAILABLE: connection reset"), ("hedge", None)]
    assert run.outcome.cancelled == ()
    assert [a.node_ids for a in run.assignments] == [("slow",), ("hedge",)]  # the hedge, not a retry on top
    assert busy(run.in_flight) == {}


async def test_a_node_answering_within_its_usual_time_is_not_hedged() -> None:
    run = await dispatch({"a": answers("4", after_s=0.02), "b": answers("4")}, config=HEDGING)

    assert run.answered == [("a", None)]
    assert run.assignments == [Assignment("c1", ("a",))]


async def test_the_hedge_waits_for_the_node_s_usual_time_times_the_factor() -> None:
    nodes = [node("a", 100.0), node("b", 110.0)]  # 3 x 100 ms = 0.3 s before a hedge
    run = await dispatch({"a": answers("4", after_s=0.15), "b": answers("4")}, nodes=nodes, config=HEDGING)

    assert run.answered == [("a", None)]
    assert len(run.assignments) == 1


async def test_a_node_not_measured_yet_is_hedged_after_the_time_expected_of_its_model_size() -> None:
    """A fresh network: nothing measured. Before, every node was hedged at hedge_min_s."""
    def fresh(node_id: str, model: str) -> NodeRecord:
        return NodeRecord(NodeDescription(node_id, "127.0.0.1:1", model=model), latency_ms=None)

    small, big = fresh("a-small", "qwen2.5-coder-0.5b-instruct"), fresh("b-big", "qwen2.5-coder-1.5b-instruct")
    scripts = {"a-small": answers("4", after_s=0.2), "b-big": answers("4")}
    # default 100 ms for the median size (1B): the 0.5B is expected in 50 ms, hedged after 3 x 50 ms
    route = replace(ROUTE, default_latency_ms=100.0)
    run = await dispatch(scripts, nodes=[small, big], config=HEDGING, route=route)
    assert [a.node_ids for a in run.assignments] == [("a-small",), ("b-big",)]
    # twice as long expected: 0.3 s, and its answer at 0.2 s is not raced
    run = await dispatch(scripts, nodes=[small, big], config=HEDGING, route=replace(route, default_latency_ms=200.0))
    assert [a.node_ids for a in run.assignments] == [("a-small",)] and run.answered == [("a-small", None)]


async def test_a_slow_node_with_no_node_left_to_hedge_still_answers() -> None:
    run = await dispatch({"a": answers("4", after_s=0.1)}, nodes=[node("a", 10.0)], config=HEDGING)

    assert run.answered == [("a", None)]
    assert run.outcome.cancelled == ()


# --- settling early: stragglers are cancelled -----------------------------------------------------


async def test_settling_early_cancels_the_stragglers() -> None:
    run = await dispatch({"fast": answers("4"), "slow": answers("4", after_s=1.0)}, chunk=HIGH, settled=one_good)

    assert run.answered == [("fast", None)]
    assert run.outcome.cancelled == ("slow",)
    assert run.connector.interrupted == ["slow"]
    assert run.settled_calls == [["fast"]]
    assert busy(run.in_flight) == {}


async def test_an_unsettled_chunk_waits_for_every_slot() -> None:
    run = await dispatch({"a": answers("4"), "b": answers("5", after_s=0.05)}, chunk=HIGH,
                         settled=lambda so_far: False)

    assert run.answered == [("a", None), ("b", None)]
    assert run.outcome.cancelled == ()
    assert run.settled_calls == [["a"], ["a", "b"]]


async def test_a_failed_answer_never_settles_the_chunk() -> None:
    run = await dispatch({"a": (Failure(),), "b": answers("4", after_s=0.05), "c": answers("4", after_s=1.0)},
                         chunk=HIGH, settled=one_good)

    assert run.answered == [("a", "UNAVAILABLE: connection reset"), ("b", None)]
    assert run.outcome.cancelled == ("c",)  # a's retry, still streaming when b settled the chunk
    assert run.settled_calls == [["a", "b"]]
    assert busy(run.in_flight) == {}


async def test_settling_cancels_a_straggler_s_hedge_too_and_lists_each_node_once() -> None:
    nodes = [node("steady", 200.0), node("stuck", 10.0), node("hedge", 300.0)]  # stuck hedged at 0.05 s, steady at 0.6
    scripts = {"steady": answers("4", after_s=0.25), "stuck": (SILENCE,), "hedge": answers("4", after_s=1.0)}
    run = await dispatch(scripts, nodes=nodes, chunk=HIGH, config=HEDGING,
                         settled=one_good)

    assert run.answered == [("steady", None)]
    assert run.outcome.cancelled == ("stuck", "hedge")
    assert sorted(run.connector.interrupted) == ["hedge", "stuck"]
    assert busy(run.in_flight) == {}


# --- the class itself, and stream_answer on its own -----------------------------------------------


async def test_the_dispatch_s_named_state_after_a_retry() -> None:
    table = NodeTable([node("a", 100.0), node("b", 200.0), node("c", 300.0)])
    counts: dict[str, int] = {}
    chunk_dispatch = ChunkDispatch(
        LOW, REQUEST, nodes=lambda: table, in_flight=counts,
        connector=FakeNodeConnector({"a": (Failure(),), "b": answers("4")}), route_config=ROUTE, config=CONFIG,
        emit=lambda event: None, on_answer=lambda answer: None,
    )

    outcome = await chunk_dispatch.run()

    assert chunk_dispatch.tried == {"a", "b"}
    assert set(chunk_dispatch.snapshot) == {"a", "b"} and chunk_dispatch.snapshot["b"].latency_ms == 200.0
    assert list(chunk_dispatch.running) == ["b"]  # the slot's task, now under the node it moved to
    assert chunk_dispatch.answers == outcome.answers
    assert chunk_dispatch.cancelled == []
    assert counts == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    ("script", "confidence", "tokens"),
    [
        pytest.param((piece("4", -0.5, -0.5), final()), math.exp(-0.5), 2, id="from-logprobs"),
        pytest.param((StreamPiece("4", ()), final(confidence=0.8)), 0.8, 1, id="reported-when-no-logprobs"),
        pytest.param((StreamPiece("4", ()), final()), 0.5, 1, id="neutral-when-neither"),
    ],
)
async def test_stream_answer_confidence(script: tuple[Step, ...], confidence: float, tokens: int) -> None:
    events: list[PipelineEvent] = []

    answer = await stream_answer(node("a"), REQUEST, FakeNodeConnector({"a": script}), CONFIG, events.append)

    assert answer.error is None and answer.text == "4"
    assert answer.confidence == pytest.approx(confidence)
    assert events == [ChunkToken("c1", "a", "4", tokens)]


@pytest.mark.parametrize(("latency_ms", "in_flight", "expected"), [
    (1000.0, 1, 1000.0),  # only this request: its usual time
    (1000.0, 3, 3000.0),  # two ahead of it: it waits its turn before its first token
    (1000.0, 0, 1000.0),  # (a count already released) never less than one answer's time
    (None, 2, None),  # never measured: the stall watch uses its first-token deadline
])
def test_a_busy_node_is_given_time_for_the_requests_ahead_of_it(
        latency_ms: float | None, in_flight: int, expected: float | None) -> None:
    assert usual_wait_ms(latency_ms, in_flight) == expected
