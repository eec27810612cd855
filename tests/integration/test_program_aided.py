"""Program-aided arithmetic and never serving a value the coordinator has proven wrong, end to end:
an in-process coordinator (real sandbox) and scripted test-double nodes over real gRPC."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.client.errors import UnavailableError
from dellm.coordinator.config import CoordinatorConfig
from dellm.node.backends.scripted import ScriptedBackend
from dellm.protos import dellm_pb2
from tests.conftest import Cluster, script

PERCENT = "Calculate 15% of 240 then name the capital of Japan"
CAPITAL = {"pattern": "(?i)capital of japan", "reply": "Tokyo", "delay": 0.005}


def program(body: str, stated: str) -> str:
    return f"Here is the program:\n```python\n{body}\n```\nAnswer: {stated}"


async def collect(address: str, query: str) -> list[dellm_pb2.AskEvent]:
    async with DellmClient(address) as client:
        return [event async for event in client.ask(query)]


def chunk_result(events: list[dellm_pb2.AskEvent], chunk_id: str) -> dellm_pb2.ChunkResultEvent:
    return next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result"
                and e.chunk_result.chunk_id == chunk_id)


def rewards(events: list[dellm_pb2.AskEvent], chunk_id: str) -> dict[str, dellm_pb2.NodeReward]:
    return {r.node_id[:1]: r for r in events[-1].final.rewards if r.chunk_id == chunk_id}


async def test_a_node_is_judged_by_its_program_not_its_words(cluster: Cluster) -> None:
    """It says 360; its program computes 36: the vote and the verdict follow the program."""
    says_wrong = program("answer = 15 / 100 * 240", "360")
    await cluster.add_node("a", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": says_wrong}]))
    events = await collect(cluster.address, PERCENT)
    c1 = chunk_result(events, "c1")
    assert c1.value == pytest.approx(36) and c1.checked_by == "exact_check"
    assert "360" not in c1.answer and "36" in c1.answer
    [vote] = c1.votes
    assert vote.program == "stated 360, its program computed 36: judged by the program"
    assert rewards(events, "c1")["a"].verdict == dellm_pb2.CORRECT
    final = events[-1].final
    assert "36" in final.answer and "360" not in final.answer and "Tokyo" in final.answer


@pytest.mark.parametrize("body", [
    "while True:\n    pass",
    "x = [0] * 10**10\nanswer = 36",
    "import os\nanswer = 36",
    "answer = ().__class__.__bases__[0].__subclasses__()",
    "answer = 1 / 0",
], ids=["loops", "allocates", "imports", "escapes", "fails"])
async def test_a_program_that_fails_is_a_wrong_answer_and_the_coordinator_stays_up(
        cluster: Cluster, body: str) -> None:
    await cluster.add_node("a", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": program(body, "36")}]))
    await cluster.add_node("b", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": "It is 36. Answer: 36",
                                                  "delay": 0.3}]))
    events = await collect(cluster.address, PERCENT)
    c1 = chunk_result(events, "c1")
    assert c1.value == pytest.approx(36)
    failed = [v for v in c1.votes if v.failed]
    assert [v.node_id[:1] for v in failed] == ["a"] and "its program did not compute a number" in failed[0].error
    assert rewards(events, "c1")["a"].verdict == dellm_pb2.WRONG
    assert rewards(events, "c1")["b"].verdict == dellm_pb2.CORRECT
    # the coordinator is still serving
    again = await collect(cluster.address, "What is 2 plus 3?")
    assert again[-1].WhichOneof("event") == "final"


async def test_escalation_asks_another_model_when_every_answer_is_proven_wrong(cluster: Cluster) -> None:
    wrong = [CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 360"}]
    await cluster.add_node("a", script(wrong, model="small"))
    await cluster.add_node("b", script(wrong, model="small"))
    await cluster.add_node("c", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 36"}],
                                       model="large"))
    await cluster.add_node("d", script(wrong, model="small"))
    cluster.config  # noqa: B018 (default flags)
    events = await collect(cluster.address, PERCENT)
    c1 = chunk_result(events, "c1")
    assert c1.value == pytest.approx(36) and c1.checked_by == "exact_check"
    asked = [n[:1] for e in events if e.WhichOneof("event") == "assignment" and e.assignment.chunk_id == "c1"
             for n in e.assignment.node_ids]
    assert "c" in asked  # the other model was asked before another copy of the wrong one
    assert rewards(events, "c1")["c"].verdict == dellm_pb2.CORRECT
    assert all(r.verdict == dellm_pb2.WRONG for k, r in rewards(events, "c1").items() if k != "c")
    assert "360" not in events[-1].final.answer


@pytest.mark.parametrize("useless", ["Calculate 15% of 240", "", "1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1"],
                         ids=["repeats-the-question", "empty", "loops"])
async def test_a_useless_answer_to_checked_arithmetic_is_escalated_not_a_failed_query(
        cluster: Cluster, useless: str) -> None:
    """Checked arithmetic goes to one node; the fitness benchmark's query failed UNAVAILABLE when that one
    node's answer could not be used, though the coordinator knew the value."""
    await cluster.add_node("a", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": useless}], model="small"))
    await cluster.add_node("b", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 36", "delay": 0.05}],
                                       model="large"))
    events = await collect(cluster.address, PERCENT)
    c1 = chunk_result(events, "c1")
    asked = [n[:1] for e in events if e.WhichOneof("event") == "assignment" and e.assignment.chunk_id == "c1"
             for n in e.assignment.node_ids]
    assert asked[0] == "a" and "b" in asked
    assert c1.value == pytest.approx(36) and c1.checked_by == "exact_check"
    assert rewards(events, "c1")["b"].verdict == dellm_pb2.CORRECT
    assert "Tokyo" in events[-1].final.answer


async def test_the_coordinator_serves_its_own_value_when_no_node_agrees(cluster: Cluster) -> None:
    wrong = [CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 360"}]
    for name in ("a", "b", "c"):
        await cluster.add_node(name, script(wrong))
    events = await collect(cluster.address, PERCENT)
    c1 = chunk_result(events, "c1")
    assert c1.checked_by == "coordinator" and c1.value == pytest.approx(36)
    assert "computed by the coordinator" in c1.answer and "360" in c1.answer  # says what the nodes said
    final = events[-1].final
    assert final.checked_by == "coordinator" and final.chunks[0].checked_by == "coordinator"
    assert "36" in final.answer.replace("360", "")
    assert all(r.verdict == dellm_pb2.WRONG and r.reward < 0 for r in rewards(events, "c1").values())


async def test_dependent_arithmetic_is_checked_with_the_result_substituted(cluster: Cluster) -> None:
    rules = [{"pattern": "(?i)Using those results", "reply": "Answer: 1000"},  # the dependent step, wrong
             {"pattern": "(?i)123 plus 456", "reply": "Answer: 579"}]
    for name in ("a", "b"):
        await cluster.add_node(name, script(rules))
    events = await collect(cluster.address, "What is 123 plus 456, then multiply the result by 2")
    c2 = chunk_result(events, "c2")
    assert c2.value == pytest.approx(1158) and c2.checked_by == "coordinator"
    assert "1158" in events[-1].final.answer.replace(",", "")


async def test_a_dependency_that_is_not_a_number_is_no_crash(cluster: Cluster) -> None:
    rules = [{"pattern": "(?i)Using those results", "reply": "Answer: 10"},
             {"pattern": "(?i)capital of japan", "reply": "Tokyo"}]
    await cluster.add_node("a", script(rules))
    events = await collect(cluster.address, "Name the capital of Japan, then multiply the result by 2")
    assert events[-1].WhichOneof("event") == "final"
    results = [e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result"]
    assert all(r.checked_by != "coordinator" for r in results)  # nothing to check it against: no invented value


async def test_a_step_on_a_checked_result_starts_before_that_result_is_answered(cluster: Cluster) -> None:
    """"123 plus 456" is 579 whatever the nodes say, so "multiply the result by 2" is asked at once with 579,
    and settles while the first step's node is still writing."""
    rules = [{"pattern": "(?i)^multiply 579 by 2$", "reply": "Answer: 1158"},  # the result written in
             {"pattern": "(?i)123 plus 456", "reply": "Answer: 579", "delay": 1.0}]
    for name in ("a", "b", "c"):
        await cluster.add_node(name, script(rules))
    events = await collect(cluster.address, "What is 123 plus 456, then multiply the result by 2")
    settled = [e.chunk_result.chunk_id for e in events if e.WhichOneof("event") == "chunk_result"]
    assert settled == ["c2", "c1"]
    assert chunk_result(events, "c1").checked_by == chunk_result(events, "c2").checked_by == "exact_check"
    assert chunk_result(events, "c2").value == pytest.approx(1158)
    assert "1158" in events[-1].final.answer.replace(",", "")


@pytest.mark.parametrize(("budget_s", "served_by"), [(0.3, "coordinator"), (None, "exact_check")])
async def test_an_escalation_past_its_budget_serves_the_checked_value(
        tmp_path: Path, budget_s: float | None, served_by: str) -> None:
    """Every answer is proven wrong and the other model is slow: within the escalation budget the query waits
    for it; past the budget it is cancelled and the coordinator's checked value is served, saying so."""
    config = CoordinatorConfig(canary_interval_s=0)
    cluster = Cluster(tmp_path, replace(config, dispatch=replace(config.dispatch, escalation_budget_s=budget_s)))
    await cluster.start_coordinator()
    try:
        await cluster.add_node("a", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 360"}],
                                           model="small"))
        await cluster.add_node("c", script([CAPITAL, {"pattern": "(?i)15% of 240", "reply": "Answer: 36",
                                                      "delay": 1.5}], model="large"))
        started = time.perf_counter()
        events = await collect(cluster.address, PERCENT)
        took = time.perf_counter() - started
        c1 = chunk_result(events, "c1")
        assert c1.value == pytest.approx(36) and c1.checked_by == served_by and "360" not in events[-1].final.answer
        if budget_s is not None:
            assert took < 1.4 and "c" in [n[:1] for n in c1.cancelled_node_ids]
            assert "c" not in rewards(events, "c1")  # cut off, not judged
        else:
            assert rewards(events, "c1")["c"].verdict == dellm_pb2.CORRECT
        assert rewards(events, "c1")["a"].verdict == dellm_pb2.WRONG
    finally:
        await cluster.close()


# --- word problems: a plausible program alone, or the rest of the plan --------------------------------------------

FRIES = ("Dave bought a pack of fries. He ate 14 and his son ate 9, leaving 25. "
         "How many french fries were in the pack?")


def word_problem_node(program_body: str, worked: str, model: str, delay: float = 0.0) -> ScriptedBackend:
    """A test-double node that answers the plan's programs (both kinds) with ``program_body`` and its worked
    steps (both kinds) with ``worked``."""
    return script([{"pattern": "(?s)french fries.*(?:python|solution)", "reply": f"```python\n{program_body}\n```",
                    "delay": delay},
                   {"pattern": "(?s)french fries.*(?:step by step|in words)", "reply": worked, "delay": delay}],
                  model=model)


async def test_a_plausible_program_settles_a_word_problem_alone(cluster: Cluster) -> None:
    await cluster.add_node("a", word_problem_node("answer = 14 + 9 + 25", "Answer: 48", "m-1.5b"))
    await cluster.add_node("b", word_problem_node("answer = 14 + 9 + 25", "Answer: 48", "m-0.5b"))
    events = await collect(cluster.address, FRIES)
    c1 = chunk_result(events, "c1")
    assert c1.value == pytest.approx(48)
    # one answer, from the stronger model's node, asked alone (the faster 0.5b is not asked at all)
    assert [v.node_id[:1] for v in c1.votes] == ["a"]
    asked = [n[:1] for e in events if e.WhichOneof("event") == "assignment" for n in e.assignment.node_ids]
    assert asked == ["a"]


async def test_an_implausible_program_asks_the_rest_of_the_plan_and_the_plausible_answers_win(
        cluster: Cluster) -> None:
    # the stronger node's program divides where it should add: 5.5 french fries; its worked steps are right
    await cluster.add_node("a", word_problem_node("answer = (14 + 9 + 25) / 8 - 0.5", "14 + 9 + 25 = 48\nAnswer: 48",
                                                  "m-1.5b"))
    await cluster.add_node("b", word_problem_node("answer = 14 + 9 + 25", "Answer: 47", "m-0.5b", delay=0.05))
    events = await collect(cluster.address, FRIES)
    c1 = chunk_result(events, "c1")
    assert c1.value == pytest.approx(48)
    values = sorted(v.normalized for v in c1.votes)
    assert values[:2] == ["num:48", "num:48"] and "num:5.5" in values  # the program's fraction was a lost vote
    assert {v.node_id[:1] for v in c1.votes} == {"a", "b"}  # the rest of the plan went to every node
    assert "5.5" not in events[-1].final.answer


@pytest.mark.parametrize("third", [True, False], ids=["a-third-node-answers", "no-other-node"])
async def test_a_fact_no_node_could_answer_is_escalated_not_a_failed_query(tmp_path: Path, third: bool) -> None:
    """Both nodes asked only repeat the question (an answer, so no retry, but no vote): a third is asked
    before the query fails, and a failure says why each answer could not be used. (An empty answer is a
    failed node, retried on another node at once.)"""
    config = CoordinatorConfig(canary_interval_s=0)
    cluster = Cluster(tmp_path, replace(config, route=replace(config.route, exploration="none")))
    await cluster.start_coordinator()
    try:
        question = "Name the capital of Japan"
        await cluster.add_node("a", script([{"pattern": "(?i)capital of japan", "reply": question}], model="m-1.5b"))
        await cluster.add_node("b", script([{"pattern": "(?i)capital of japan", "reply": question + "?"}],
                                           model="m-0.5b"))
        if not third:
            with pytest.raises(UnavailableError) as failed:
                await collect(cluster.address, question)
            assert str(failed.value).count("(it only repeats the question)") == 2
            return
        await cluster.add_node("c", script([{"pattern": "(?i)capital of japan", "reply": "Tokyo"}], model="m-0.5b"))
        events = await collect(cluster.address, question)
        asked = [n[:1] for e in events if e.WhichOneof("event") == "assignment" for n in e.assignment.node_ids]
        assert sorted(asked[:2]) == ["a", "b"] and asked[2:] == ["c"]  # the pair routing chose, then the escalation
        assert events[-1].WhichOneof("event") == "final" and "Tokyo" in events[-1].final.answer
        assert rewards(events, "c1")["c"].verdict != dellm_pb2.WRONG
    finally:
        await cluster.close()
