"""Stage 6 (reward): exact checks, verdicts, rewards and the fitness moving average. Pure, no network."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from dellm.coordinator.config import RewardConfig
from dellm.coordinator.pipeline.answers import exact_answer, reference_key
from dellm.coordinator.pipeline.assemble import assemble_chunk
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.reward import judge_chunk, reward_for, speed_bonus, update_fitness
from dellm.coordinator.types import Chunk, ChunkResult, NodeAnswer, RewardDecision, Verdict

CONFIG = RewardConfig()
MATH = Chunk("c1", Operation.MATH_OP, "What is 12 * 7 + 3?", 8, 0.6)
WORD_PROBLEM = Chunk("c1", Operation.MATH_OP, "Janet has 16 eggs. She eats 3. How many are left?", 14, 0.7)
SEARCH = Chunk("c1", Operation.SEARCH_OP, "Find the capital of France", 5, 0.35)


def _answer(node_id: str, text: str, latency_ms: float = 0.0, *, error: str | None = None) -> NodeAnswer:
    return NodeAnswer("c1", node_id, text, 1.0, latency_ms, error=error)


def _judge(chunk: Chunk, answers: list[NodeAnswer], fitness: float = 0.5) -> dict[str, RewardDecision]:
    """Run the real stage 4 vote, then stage 6, as the pipeline does."""
    expected = exact_answer(chunk.text) if chunk.operation is Operation.MATH_OP else None  # as the pipeline does
    result: ChunkResult = assemble_chunk(chunk, answers, {a.node_id: fitness for a in answers},
                                         reference_key(chunk.operation, expected), expected)
    decisions = judge_chunk(result, answers, CONFIG)
    assert [d.node_id for d in decisions] == [a.node_id for a in answers]
    assert all(d.chunk_id == chunk.chunk_id for d in decisions)
    return {d.node_id: d for d in decisions}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Calculate 10% interest on $1000", 100.0, id="seed-percent-interest"),
        pytest.param("What is 12 * 7 + 3?", 87.0, id="precedence"),
        pytest.param("15 plus 27", 42.0, id="spelled-plus"),
        pytest.param("20 minus 8", 12.0, id="spelled-minus"),
        pytest.param("What is 6 times 7?", 42.0, id="spelled-times"),
        pytest.param("What is 100 divided by 4?", 25.0, id="spelled-divided-by"),
        pytest.param("What is 2 x 3?", 6.0, id="x-as-times"),
        pytest.param("What is 3 \u00d7 4?", 12.0, id="times-sign"),
        pytest.param("What is 7 \u00f7 2?", 3.5, id="division-sign"),
        pytest.param("What is 2^10?", 1024.0, id="caret-power"),
        pytest.param("What is 1,000 + 2,000?", 3000.0, id="thousands-separators"),
        pytest.param("What is 10 - 20?", -10.0, id="negative-result"),
        pytest.param("Calculate 15% tip on $80", 12.0, id="percent-tip"),
        pytest.param("What is 5% of $200?", 10.0, id="percent-of"),
        pytest.param("Calculate 7 * 8 then find banks", 56.0, id="expression-inside-text"),
    ],
)
def test_exact_answer_reads_arithmetic(text: str, expected: float) -> None:
    assert exact_answer(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Janet has 16 eggs. She eats 3. How many are left?", id="word-problem"),
        pytest.param("A shirt costs $20 and is discounted. What is the new price?", id="word-problem-one-number"),
        pytest.param("Tell me a joke", id="no-numbers"),
        pytest.param("", id="empty"),
        pytest.param("What is 5 / 0?", id="division-by-zero"),
        pytest.param("What is 2 ^ 100000?", id="huge-exponent"),
        pytest.param("What is 2 ^ 65?", id="exponent-over-limit"),
        pytest.param("What is 9 ^ 9 ^ 9?", id="tower-of-exponents"),
        pytest.param("What is 10 ^ 400?", id="overflow"),
        pytest.param("What is 3 + 4 and 5 + 6?", id="two-expressions"),
        pytest.param("What is 10% of 50 and 20% of 30?", id="two-percentages"),
        pytest.param("What is 5 +?", id="dangling-operator"),
        pytest.param("What is 1.2.3 + 4?", id="malformed-number"),
    ],
)
def test_exact_answer_is_none_when_not_exactly_readable(text: str) -> None:
    assert exact_answer(text) is None


@pytest.mark.parametrize(
    ("text", "truth"),
    [
        pytest.param("What is -5 + 3?", -2.0, id="leading-negative"),
        pytest.param("What is 2.5 * 4e3?", 10_000.0, id="scientific-notation"),
    ],
)
def test_exact_answer_is_never_a_wrong_value(text: str, truth: float) -> None:
    value = exact_answer(text)

    assert value is None or math.isclose(value, truth)


@pytest.mark.parametrize(
    ("latency_ms", "expected"),
    [
        pytest.param(0.0, 0.05, id="instant-full-bonus"),
        pytest.param(2_000.0, 0.04, id="fifth-of-reference"),
        pytest.param(5_000.0, 0.025, id="half-of-reference"),
        pytest.param(9_999.0, 0.05 * 1 / 10_000, id="just-under-reference"),
        pytest.param(10_000.0, 0.0, id="at-reference"),
        pytest.param(60_000.0, 0.0, id="after-reference"),
    ],
)
def test_speed_bonus(latency_ms: float, expected: float) -> None:
    assert speed_bonus(latency_ms, CONFIG) == pytest.approx(expected, abs=1e-12)


def test_speed_bonus_shrinks_with_latency() -> None:
    bonuses = [speed_bonus(ms, CONFIG) for ms in range(0, 12_001, 500)]

    assert all(a > b for a, b in itertools.pairwise(bonuses) if a > 0)
    assert bonuses[0] == CONFIG.max_speed_bonus
    assert bonuses[-1] == 0.0


@pytest.mark.parametrize(
    ("verdict", "latency_ms", "expected"),
    [
        pytest.param(Verdict.CORRECT, 0.0, 0.10, id="correct-instant"),
        pytest.param(Verdict.CORRECT, 5_000.0, 0.075, id="correct-half-reference"),
        pytest.param(Verdict.CORRECT, 10_000.0, 0.05, id="correct-at-reference"),
        pytest.param(Verdict.CORRECT, 30_000.0, 0.05, id="correct-slow"),
        pytest.param(Verdict.WRONG, 0.0, -0.05, id="wrong-instant"),
        pytest.param(Verdict.WRONG, 30_000.0, -0.05, id="wrong-slow"),
        pytest.param(Verdict.UNKNOWN, 0.0, 0.0, id="unknown"),
    ],
)
def test_reward_for(verdict: Verdict, latency_ms: float, expected: float) -> None:
    assert reward_for(verdict, latency_ms, CONFIG) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "latency_ms", "verdict", "reward"),
    [
        pytest.param("87", 0.0, Verdict.CORRECT, 0.10, id="right-instant"),
        pytest.param("12 * 7 = 84, 84 + 3 = 87", 2_000.0, Verdict.CORRECT, 0.09, id="right-with-working"),
        pytest.param("The answer is 87.0", 20_000.0, Verdict.CORRECT, 0.05, id="right-slow"),
        pytest.param("88", 0.0, Verdict.WRONG, -0.05, id="wrong"),
        pytest.param("eighty-seven", 0.0, Verdict.WRONG, -0.05, id="no-number"),
    ],
)
def test_exact_check_judges_math_answers(text: str, latency_ms: float, verdict: Verdict, reward: float) -> None:
    decision = _judge(MATH, [_answer("n", text, latency_ms), _answer("other", "87")])["n"]

    assert (decision.verdict, decision.source, decision.correct_answer) == (verdict, "exact_check", "87")
    assert decision.reward == pytest.approx(reward)


def test_exact_check_beats_the_vote() -> None:
    answers = [_answer("maj1", "88"), _answer("maj2", "88"), _answer("lone", "87")]

    decisions = _judge(MATH, answers)

    assert {n: d.verdict for n, d in decisions.items()} == {
        "maj1": Verdict.WRONG,
        "maj2": Verdict.WRONG,
        "lone": Verdict.CORRECT,
    }
    assert {d.source for d in decisions.values()} == {"exact_check"}


def test_exact_check_applies_to_a_lone_answer() -> None:
    decision = _judge(MATH, [_answer("solo", "87")])["solo"]

    assert (decision.verdict, decision.source) == (Verdict.CORRECT, "exact_check")


def test_exact_check_only_for_math_chunks() -> None:
    chunk = Chunk("c1", Operation.GENERAL_OP, "What is 12 * 7 + 3?", 8, 0.6)

    decision = _judge(chunk, [_answer("solo", "99")])["solo"]

    assert (decision.verdict, decision.source, decision.reward) == (Verdict.UNKNOWN, "none", 0.0)


def test_correct_answer_keeps_the_exact_value() -> None:
    chunk = Chunk("c1", Operation.MATH_OP, "What is 1234.5 * 100.1?", 8, 0.6)

    decision = _judge(chunk, [_answer("n", "123573.45")])["n"]

    assert decision.verdict is Verdict.CORRECT
    assert float(decision.correct_answer) == pytest.approx(123573.45, rel=1e-12)


@pytest.mark.parametrize(
    ("chunk", "bad", "truth"),
    [
        pytest.param(MATH, _answer("bad", "", error="deadline exceeded"), "87", id="timeout-checkable"),
        pytest.param(MATH, _answer("bad", "87", error="stream reset"), "87", id="failed-with-right-partial-text"),
        pytest.param(MATH, _answer("bad", "   "), "87", id="empty-checkable"),
        pytest.param(SEARCH, _answer("bad", "", error="unavailable"), "", id="failed-unverifiable"),
        pytest.param(WORD_PROBLEM, _answer("bad", ""), "", id="empty-word-problem"),
    ],
)
def test_failed_or_empty_answer_is_wrong_by_failure(chunk: Chunk, bad: NodeAnswer, truth: str) -> None:
    decision = _judge(chunk, [bad, _answer("good", "87")])["bad"]

    assert (decision.verdict, decision.source, decision.correct_answer) == (Verdict.WRONG, "failure", truth)
    assert decision.reward == pytest.approx(CONFIG.wrong_reward)


@pytest.mark.parametrize(
    ("chunk", "texts", "expected"),
    [
        pytest.param(
            SEARCH,
            ["Paris", "paris.", "Berlin"],
            {"n0": Verdict.CORRECT, "n1": Verdict.CORRECT, "n2": Verdict.WRONG},
            id="majority-text",
        ),
        pytest.param(
            WORD_PROBLEM,
            ["13", "The answer is 13", "12"],
            {"n0": Verdict.CORRECT, "n1": Verdict.CORRECT, "n2": Verdict.WRONG},
            id="majority-word-problem",
        ),
        pytest.param(SEARCH, ["Paris", "Paris"], {"n0": Verdict.CORRECT, "n1": Verdict.CORRECT}, id="two-agree"),
    ],
)
def test_vote_verdicts_with_two_or_more_compared_answers(
    chunk: Chunk, texts: list[str], expected: dict[str, Verdict]
) -> None:
    answers = [_answer(f"n{i}", t, 1_000.0) for i, t in enumerate(texts)]

    decisions = _judge(chunk, answers)

    assert {n: d.verdict for n, d in decisions.items()} == expected
    assert {d.source for d in decisions.values()} == {"vote"}
    assert {d.correct_answer for d in decisions.values()} == {texts[0]}
    for node_id, decision in decisions.items():
        assert decision.reward == pytest.approx(reward_for(expected[node_id], 1_000.0, CONFIG, verified=False))


@pytest.mark.parametrize(
    ("chunk", "answers"),
    [
        pytest.param(SEARCH, [_answer("solo", "Paris", 100.0)], id="lone-text"),
        pytest.param(WORD_PROBLEM, [_answer("solo", "13", 100.0)], id="lone-word-problem"),
        pytest.param(
            SEARCH, [_answer("solo", "Paris", 100.0), _answer("x", "", error="timeout")], id="lone-beside-a-failure"
        ),
    ],
)
def test_lone_unverifiable_answer_is_unknown(chunk: Chunk, answers: list[NodeAnswer]) -> None:
    decision = _judge(chunk, answers)["solo"]

    assert (decision.verdict, decision.source, decision.reward, decision.correct_answer) == (
        Verdict.UNKNOWN,
        "none",
        0.0,
        "",
    )


@pytest.mark.parametrize(
    ("old", "reward", "expected"),
    [
        pytest.param(0.5, -0.05, 0.9 * 0.5 + 0.1 * 0.0, id="wrong-scores-0"),
        pytest.param(0.5, 0.10, 0.9 * 0.5 + 0.1 * 1.0, id="correct-instant-scores-1"),
        pytest.param(0.5, 0.05, 0.9 * 0.5 + 0.1 * (2 / 3), id="correct-slow-scores-two-thirds"),
        pytest.param(0.5, 0.0, 0.9 * 0.5 + 0.1 * (1 / 3), id="zero-reward-scores-one-third"),
        pytest.param(0.0, -0.05, 0.0, id="floor"),
        pytest.param(1.0, 0.10, 1.0, id="ceiling"),
        pytest.param(0.8, 5.0, 0.9 * 0.8 + 0.1 * 1.0, id="reward-above-range-clamped"),
        pytest.param(0.2, -5.0, 0.9 * 0.2, id="reward-below-range-clamped"),
    ],
)
def test_update_fitness_is_seed_moving_average(old: float, reward: float, expected: float) -> None:
    assert update_fitness(old, reward, CONFIG) == pytest.approx(expected, abs=1e-12)


def test_update_fitness_stays_in_unit_interval_over_random_updates() -> None:
    rng = random.Random(20240601)
    fitness = CONFIG.initial_fitness
    for _ in range(1000):
        if rng.random() < 0.5:
            reward = reward_for(rng.choice(list(Verdict)), rng.uniform(0, 20_000), CONFIG)
        else:
            reward = rng.uniform(-1.0, 1.0)
        fitness = update_fitness(fitness, reward, CONFIG)
        assert 0.0 <= fitness <= 1.0


@pytest.mark.parametrize(
    ("verdict", "latency_ms", "limit"),
    [
        pytest.param(Verdict.CORRECT, 0.0, 1.0, id="always-right-instant-rises-to-1"),
        pytest.param(Verdict.CORRECT, 10_000.0, 2 / 3, id="always-right-slow-rises-to-two-thirds"),
        pytest.param(Verdict.WRONG, 0.0, 0.0, id="always-wrong-falls-to-0"),
    ],
)
def test_update_fitness_converges(verdict: Verdict, latency_ms: float, limit: float) -> None:
    fitness = CONFIG.initial_fitness
    history = [fitness]
    for _ in range(200):
        fitness = update_fitness(fitness, reward_for(verdict, latency_ms, CONFIG), CONFIG)
        history.append(fitness)

    direction = 1 if limit > CONFIG.initial_fitness else -1
    assert all(direction * (b - a) > 0 for a, b in itertools.pairwise(history))  # strictly monotone
    assert fitness == pytest.approx(limit, abs=1e-6)


def test_two_answers_that_disagree_earn_no_verdict() -> None:
    decisions = _judge(SEARCH, [_answer("n0", "Paris"), _answer("n1", "Berlin")])

    assert {(d.verdict, d.source, d.reward) for d in decisions.values()} == {(Verdict.UNKNOWN, "none", 0.0)}


def test_degenerate_output_is_wrong_by_failure() -> None:
    looping = "- 1000 * 0.10 = 1000 " * 6
    decisions = _judge(SEARCH, [_answer("loop", looping), _answer("a", "Paris"), _answer("b", "Paris")])

    assert (decisions["loop"].verdict, decisions["loop"].source) == (Verdict.WRONG, "failure")
    assert decisions["a"].verdict is Verdict.CORRECT


def test_a_label_is_the_strongest_evidence_and_earns_the_speed_bonus() -> None:
    word_problem = Chunk("c1", Operation.MATH_OP, "Janet has 16 eggs and eats 3. How many are left?", 12, 0.6)
    answers = [_answer("right", "Answer: 13", 100.0), _answer("wrong", "Answer: 12", 100.0),
               _answer("wrong2", "12", 100.0)]
    result = assemble_chunk(word_problem, answers, {a.node_id: 0.5 for a in answers}, reference_key(
        Operation.MATH_OP, label="13"))
    decisions = {d.node_id: d for d in judge_chunk(result, answers, CONFIG, label="13")}

    assert result.answer == "Answer: 13"  # the labelled answer wins against a majority
    assert {n: (d.verdict, d.source) for n, d in decisions.items()} == {
        "right": (Verdict.CORRECT, "label"), "wrong": (Verdict.WRONG, "label"), "wrong2": (Verdict.WRONG, "label")}
    assert decisions["right"].reward == pytest.approx(reward_for(Verdict.CORRECT, 100.0, CONFIG))
    assert decisions["right"].reward > CONFIG.correct_reward  # verified: speed bonus
    assert decisions["right"].correct_answer == "13"


def test_a_vote_earns_no_speed_bonus() -> None:
    decisions = _judge(SEARCH, [_answer("a", "Paris", 10.0), _answer("b", "Paris", 10.0)])
    assert {d.reward for d in decisions.values()} == {CONFIG.correct_reward}


def _judge_in_order(chunk: Chunk, answers: list[NodeAnswer]) -> list[RewardDecision]:
    result = assemble_chunk(chunk, answers, {a.node_id: 0.5 for a in answers})
    return judge_chunk(result, answers, CONFIG)


def test_a_node_that_answered_twice_is_judged_answer_by_answer() -> None:
    # self-consistency: node a said 12 then 13; b and c said 13. The vote is 13; a's first answer is wrong.
    answers = [_answer("a", "Answer: 12"), _answer("b", "Answer: 13"), _answer("a", "Answer: 13"),
               _answer("c", "Answer: 13")]
    verdicts = [(d.node_id, d.verdict) for d in _judge_in_order(WORD_PROBLEM, answers)]
    assert verdicts == [("a", Verdict.WRONG), ("b", Verdict.CORRECT), ("a", Verdict.CORRECT), ("c", Verdict.CORRECT)]


def test_the_winning_group_is_the_vote_s_even_when_the_winner_answered_in_another_group_first() -> None:
    answers = [_answer("a", "Answer: 12"), _answer("a", "Answer: 13"), _answer("b", "Answer: 13")]
    result = assemble_chunk(WORD_PROBLEM, answers, {"a": 0.9, "b": 0.5})
    assert result.value == 13 and result.winner_node_id == "a"
    assert result.winning_node_ids == ("a", "b")
    assert {v.normalized for v in result.votes if v.group == result.winning_group} == {"num:13"}


def test_a_node_agreeing_with_itself_is_no_majority() -> None:
    answers = [_answer("a", "Answer: 13"), _answer("a", "Answer: 13"), _answer("b", "Answer: 9")]
    assert {d.verdict for d in _judge_in_order(WORD_PROBLEM, answers)} == {Verdict.UNKNOWN}
