"""Self-consistency for word problems (pipeline/consistency.py): the plan of samples, when the first answer
settles alone and when the vote is clear, how dispatch spreads the samples over the nodes (the strongest model
first, a node taking the next sample while the vote is open), driven by the fake connector of test_dispatch,
and how the vote breaks ties. The two phases end to end, over gRPC: tests/integration/test_program_aided.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import pytest

from dellm.coordinator.config import DispatchConfig, RouteConfig
from dellm.coordinator.pipeline.assemble import assemble_chunk
from dellm.coordinator.pipeline.consistency import (
    FAMILY,
    Method,
    consistency_settled,
    first_answer_settles,
    sample_plan,
    sample_requests,
)
from dellm.coordinator.pipeline.dispatch import ChunkDispatch
from dellm.coordinator.pipeline.execute import judge_by_program
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import REASONING_SYSTEM, build_chunk_prompt
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.sandbox import SubprocessSandbox
from dellm.coordinator.types import Chunk, ChunkRequest, NodeAnswer, NodeRecord, StreamPiece
from dellm.protos.wire import NodeDescription

PROBLEM = Chunk("c1", Operation.MATH_OP, "Tom has 3 bags of 4 apples and eats 2. How many are left?", 14, 0.9)
CONFIG = DispatchConfig(samples=5, sample_temperature=0.6, first_token_timeout_s=1.0, answer_timeout_s=1.0,
                        hedge_min_s=5.0)
PROGRAM_REQUEST = ChunkRequest("q1", "c1", Operation.MATH_OP, build_chunk_prompt(PROBLEM, []), 192, 0.0,
                               CONFIG.program_system_prompt)


R, P, PR, FP = Method.REASONING, Method.PROGRAM, Method.PLANNED_REASONING, Method.FUNCTION_PROGRAM


@pytest.mark.parametrize(("samples", "methods", "temperatures"), [
    (1, [P], [0.0]),
    (3, [P, R, FP], [0.0, 0.0, 0.0]),
    (5, [P, R, FP, PR, P], [0.0, 0.0, 0.0, 0.0, 0.6]),
    (7, [P, R, FP, PR, P, R, FP], [0.0, 0.0, 0.0, 0.0, 0.6, 0.6, 0.6]),
])
def test_the_plan_asks_every_method_greedy_before_sampling_any(samples: int, methods: list[Method],
                                                               temperatures: list[float]) -> None:
    plan = sample_plan(samples, 0.6)
    assert [s.method for s in plan] == methods
    assert [s.temperature for s in plan] == temperatures
    assert [s.index for s in plan] == list(range(samples))


def test_requests_ask_each_method_its_own_way_and_each_sample_has_its_own_seed() -> None:
    requests = sample_requests(PROBLEM, PROGRAM_REQUEST, CONFIG)
    program, reasoning, function, planned, sampled = requests
    assert reasoning.system == REASONING_SYSTEM and "step by step" in reasoning.prompt
    assert reasoning.max_tokens == CONFIG.reasoning_max_tokens
    assert program == replace(PROGRAM_REQUEST, sample=0, family="program")  # the chunk's own request
    assert planned.system == REASONING_SYSTEM and "First list the quantities" in planned.prompt
    assert planned.max_tokens == CONFIG.planned_reasoning_max_tokens
    assert function.system == CONFIG.program_system_prompt and "def solution():" in function.prompt
    assert "answer = solution()" in function.prompt and function.max_tokens == CONFIG.function_program_max_tokens
    assert len({r.prompt for r in requests[:4]}) == 4 and len({r.max_tokens for r in requests[:4]}) == 4
    assert all(r.prompt.startswith(PROBLEM.text) for r in requests)
    assert all(r.temperature == 0.0 and r.seed == 0 for r in requests[:4])  # greedy: no seed needed
    assert sampled == replace(program, temperature=0.6, seed=sampled.seed, sample=4) and sampled.seed
    assert [r.sample for r in requests] == [0, 1, 2, 3, 4]
    seven = sample_requests(PROBLEM, PROGRAM_REQUEST, replace(CONFIG, samples=7))
    assert seven[:5] == requests  # more samples only add to the plan
    assert len({r.seed for r in seven[4:]}) == 3 and all(r.seed and r.temperature == 0.6 for r in seven[4:])
    assert [r.prompt for r in seven[5:]] == [reasoning.prompt, function.prompt]
    assert sample_requests(PROBLEM, PROGRAM_REQUEST, CONFIG) == requests  # reproducible


PAL_ANSWER = """```python
def solution():
    bags = 3  # bags Tom has
    apples_per_bag = 4  # apples in each bag
    eaten = 2  # apples he eats
    total = bags * apples_per_bag
    return total - eaten

answer = solution()
```"""


async def test_a_function_program_is_judged_by_what_it_returns_in_the_sandbox() -> None:
    answer = NodeAnswer("c1", "n1", PAL_ANSWER, 0.9, 10.0, sample=3)
    judged = await judge_by_program(answer, PROBLEM, SubprocessSandbox())
    assert judged.value == 10.0 and not judged.failed and judged.program == "its program computed 10"
    # without the call the function never runs: no number, a failed program (the prompt asks for the call)
    uncalled = await judge_by_program(replace(answer, text=PAL_ANSWER.replace("answer = solution()", "")),
                                      PROBLEM, SubprocessSandbox())
    assert uncalled.program_failed and uncalled.value is None


def said(*values: float | None) -> list[NodeAnswer]:
    """Plan answers judged to ``values`` (None: a failed program), each of its plan index's family (program,
    words, program, words, ...)."""
    family = [FAMILY[s.method] for s in sample_plan(len(values), 0.6)]
    return [NodeAnswer("c1", f"n{i}", f"Answer: {v}", 0.9, 10.0, value=v, sample=i, family=family[i])
            if v is not None else
            NodeAnswer("c1", f"n{i}", "boom", 0.9, 10.0, error="its program did not compute a number", sample=i,
                       family=family[i])
            for i, v in enumerate(values)]


@pytest.mark.parametrize(("values", "settled"), [
    ((10,), False),  # one answer proves nothing
    ((None,), False),  # no vote at all yet: only failed programs
    ((None, None, None), False),
    ((10, 10), True),  # a program and words agree, none disagrees
    ((10, 12), False),
    ((10, None, 10), False),  # two programs agree: one family's slip may be shared
    ((10, 12, 10), False),
    ((10, 12, 14, 12), False),  # two answers in words agree: still one family
    ((10, 12, 12), True),  # words and a program agree, ahead of the rest
    ((10, 12, 10, 10), True),  # both families, two ahead
    ((10, 12, 12, 10), False),  # two groups of both families, level
    ((10, 12, 12, 10, 10), True),
    ((10, 12, 14, 16), False),
    ((10.0, 10.0000000001), True),  # the same number, rounded apart
    # implausible answers (a fraction of apples, none left) never settle it, however many agree
    ((2.5, 2.5), False),
    ((0, 0, 0, 0), False),
    ((2.5, 10, 10), True),  # the plausible pair settles it
    ((2.5, 10, 2.5, 10), False),  # the plausible pair is one family (words)
])
def test_the_vote_is_clear(values: tuple[float | None, ...], settled: bool) -> None:
    assert consistency_settled(PROBLEM, said(*values), planned=5) is settled


@pytest.mark.parametrize(("values", "settles"), [
    ((10,), True),  # the greedy program's plausible number settles the chunk alone
    ((None,), False),  # its program failed
    ((2.5,), False),  # a fraction of apples
    ((0,), False),  # none left, for a quantity asked
    ((-3,), False),
])
def test_the_first_answer_settles_alone_when_it_is_plausible(values: tuple[float | None, ...],
                                                            settles: bool) -> None:
    assert first_answer_settles(PROBLEM, said(*values)) is settles
    assert not first_answer_settles(PROBLEM, said(None, *values)[1:])  # only the plan's first answer does


# --- dispatching the plan -------------------------------------------------------------------------


class SampleConnector:
    """A ``NodeConnector`` test double: ``reply(node_id, request)`` is what the node answers, after
    ``delay_s[node_id]`` seconds. Records every (node, request) in call order."""

    def __init__(self, reply: Callable[[str, ChunkRequest], str], delay_s: dict[str, float]) -> None:
        self._reply, self._delay_s = reply, delay_s
        self.calls: list[tuple[str, ChunkRequest]] = []

    async def stream(self, node: NodeRecord, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]:
        self.calls.append((node.node_id, request))
        await asyncio.sleep(self._delay_s[node.node_id])
        yield StreamPiece(self._reply(node.node_id, request), (-0.1,))
        yield StreamPiece("", (), done=True, finish_reason="stop")


def record(node_id: str, model: str, latency_ms: float) -> NodeRecord:
    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1", model=model), latency_ms=latency_ms)


async def run_samples(connector: SampleConnector, nodes: Sequence[NodeRecord]) -> list[NodeAnswer]:
    table = NodeTable(list(nodes))
    requests = sample_requests(PROBLEM, PROGRAM_REQUEST, CONFIG)

    async def judge(answer: NodeAnswer) -> NodeAnswer:  # the number after "Answer:" (no sandbox needed here)
        text = answer.text.rsplit(":", 1)[-1]
        return answer if answer.failed else NodeAnswer(**{**answer.__dict__, "value": float(text)})

    def settled(answers: Sequence[NodeAnswer]) -> bool:
        return consistency_settled(PROBLEM, answers, planned=len(requests))

    async with asyncio.timeout(5.0):
        outcome = await ChunkDispatch(
            PROBLEM, PROGRAM_REQUEST, nodes=lambda: table, in_flight={}, connector=connector,
            route_config=RouteConfig(exploration="none"), config=CONFIG, emit=lambda e: None,
            on_answer=lambda a: None, settled=settled, judge=judge, count=len(requests), samples=requests,
        ).run()
    return outcome.answers


async def test_the_strongest_model_takes_the_program_and_agreement_of_the_first_two_settles() -> None:
    # the 0.5b node is faster, so it ranks first; the 1.5b node still takes the plan's first request (the program)
    connector = SampleConnector(lambda node, request: "Answer: 10", {"small": 0.01, "big": 0.05})
    answers = await run_samples(connector, [record("small", "qwen-0.5b", 100), record("big", "qwen-1.5b", 300)])
    first = {node: request for node, request in connector.calls[:2]}
    assert first["big"] == replace(PROGRAM_REQUEST, sample=0, family="program")
    assert first["small"].system == REASONING_SYSTEM
    # small answered, then took sample 2 while waiting; big's agreeing answer settled it and cancelled that
    assert [a.value for a in answers] == [10.0, 10.0]
    assert len(connector.calls) == 3 and connector.calls[2][0] == "small"


async def test_a_node_takes_the_next_samples_in_turn_until_the_vote_is_clear() -> None:
    def reply(node: str, request: ChunkRequest) -> str:  # the reasoning samples say 12, the programs 10
        return "Answer: 12" if request.system == REASONING_SYSTEM else "Answer: 10"

    connector = SampleConnector(reply, {"only": 0.01})
    answers = await run_samples(connector, [record("only", "qwen-1.5b", 100)])
    # P 10, R 12, function P 10, planned R 12, P 10 sampled: the families never agree, so the whole plan is asked
    assert [a.value for a in answers] == [10.0, 12.0, 10.0, 12.0, 10.0]
    assert [r.temperature for _, r in connector.calls] == [0.0, 0.0, 0.0, 0.0, 0.6]
    assert [a.temperature for a in answers] == [0.0, 0.0, 0.0, 0.0, 0.6]  # each answer says how it was asked
    # only the programs of the chunk's own request carry no prompt of their own
    assert [bool(a.prompt) for a in answers] == [False, True, True, True, False]


async def test_an_answer_asked_another_way_carries_its_prompt_for_the_reward_feedback() -> None:
    connector = SampleConnector(lambda node, request: "Answer: 7", {"a": 0.01, "b": 0.02})
    answers = await run_samples(connector, [record("a", "m-1.5b", 100), record("b", "m-1.5b", 200)])
    reasoning = next(a for a in answers if a.prompt)
    assert "step by step" in reasoning.prompt


async def test_a_failed_program_is_a_lost_vote_and_the_node_goes_on_sampling() -> None:
    def reply(node: str, request: ChunkRequest) -> str:
        return "Answer: 7" if request.system == REASONING_SYSTEM else "```python\nanswer = 1/0\n```"

    async def judge(answer: NodeAnswer) -> NodeAnswer:  # what execute.judge_by_program does with 1/0
        if "1/0" in answer.text:
            return NodeAnswer(**{**answer.__dict__, "error": "its program did not compute a number (boom)",
                                 "program_failed": True})
        return NodeAnswer(**{**answer.__dict__, "value": 7.0})

    connector = SampleConnector(reply, {"only": 0.01})
    table = NodeTable([record("only", "qwen-1.5b", 100)])
    requests = sample_requests(PROBLEM, PROGRAM_REQUEST, CONFIG)
    outcome = await ChunkDispatch(
        PROBLEM, PROGRAM_REQUEST, nodes=lambda: table, in_flight={}, connector=connector,
        route_config=RouteConfig(exploration="none"), config=CONFIG, emit=lambda e: None, on_answer=lambda a: None,
        settled=lambda answers: consistency_settled(PROBLEM, answers, planned=len(requests)), judge=judge,
        count=len(requests), samples=requests).run()
    # every program fails (no vote) and the node goes on: words alone never settle it, so the whole plan is asked
    assert [(a.value, a.program_failed) for a in outcome.answers] == [
        (None, True), (7.0, False), (None, True), (7.0, False), (None, True)]


def sample_answer(node: str, value: float, sample: int, confidence: float = 0.5) -> NodeAnswer:
    """Plan index ``sample``'s answer, at the temperature the plan asks it at (as dispatch records it)."""
    planned = sample_plan(8, 0.6)[sample]
    return NodeAnswer("c1", node, f"Answer: {value:g}", confidence, 10.0, value=value, sample=sample,
                      temperature=planned.temperature, family=FAMILY[planned.method])


@pytest.mark.parametrize(("answers", "served"), [
    # no two agree: the plan's earliest answer (the greedy program), whatever the other answers' confidence
    ([sample_answer("a", 6, 0, 0.3), sample_answer("b", 9, 1, 0.9), sample_answer("a", 2, 2, 0.99),
      sample_answer("b", 7, 4, 0.99)], 6),
    # the program failed to give a number: a greedy answer beats sampled singletons
    ([sample_answer("b", 9, 1, 0.2), sample_answer("a", 2, 4, 0.99), sample_answer("a", 4, 5, 0.99)], 9),
    # so does any greedy method of the plan, not only the first two
    ([sample_answer("b", 9, 3, 0.2), sample_answer("a", 2, 4, 0.99), sample_answer("a", 4, 5, 0.99)], 9),
    # two greedy methods agreeing against two sampled answers agreeing: the greedy pair
    ([sample_answer("a", 5, 2, 0.1), sample_answer("b", 5, 3, 0.1), sample_answer("a", 8, 4, 0.9),
      sample_answer("b", 8, 5, 0.9)], 5),
    # words and a program, sampled, agreeing outvote a lone greedy answer
    ([sample_answer("a", 6, 0, 0.9), sample_answer("b", 8, 4, 0.1), sample_answer("a", 8, 5, 0.1)], 8),
    # two against two, both across the families: the pair holding the plan's earliest answer
    ([sample_answer("a", 5, 0, 0.1), sample_answer("b", 8, 1, 0.9), sample_answer("a", 8, 2, 0.9),
      sample_answer("b", 5, 3, 0.1)], 5),
    # without agreement across the families, the larger group
    ([sample_answer("a", 294, 0), sample_answer("b", 3528, 1), sample_answer("a", 1050, 2),
      sample_answer("b", 3528, 3), sample_answer("a", 3, 4)], 3528),
    # but words and a program agreeing outvote two of one family
    ([sample_answer("a", 33, 0), sample_answer("b", 40, 1), sample_answer("a", 33, 2), sample_answer("b", 12, 3),
      sample_answer("a", 40, 4)], 40),
    # an implausible answer (a fraction of apples) loses to a plausible one, however many agree on it
    ([sample_answer("a", 2.5, 0), sample_answer("b", 2.5, 1), sample_answer("a", 10, 2)], 10),
    ([sample_answer("a", 0, 0), sample_answer("b", 0, 1), sample_answer("a", 10, 4, 0.1)], 10),
    # with no plausible answer at all, the vote is still served (the larger group)
    ([sample_answer("a", 0, 0), sample_answer("b", 2.5, 1), sample_answer("a", 2.5, 2)], 2.5),
])
def test_the_majority_of_samples_wins_and_without_one_the_greedy_answer(answers: list[NodeAnswer],
                                                                        served: float) -> None:
    result = assemble_chunk(PROBLEM, answers, {"a": 0.5, "b": 0.5})
    assert result.value == served
