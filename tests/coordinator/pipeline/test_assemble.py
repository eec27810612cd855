"""Stage 4 (assemble): normalization, grouping and the weighted vote. Pure, no network."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dellm.coordinator.pipeline.answers import final_number, normalize_answer, reference_key
from dellm.coordinator.pipeline.assemble import AssemblyError, assemble_chunk
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.types import Chunk, NodeAnswer

MATH = Chunk("c1", Operation.MATH_OP, "Calculate 10% interest on $10000", 7, 0.55)
SEARCH = Chunk("c2", Operation.SEARCH_OP, "Find the capital of France", 5, 0.35)


def _answer(
    node_id: str,
    text: str,
    confidence: float = 1.0,
    *,
    error: str | None = None,
    latency_ms: float = 100.0,
    chunk: Chunk = MATH,
) -> NodeAnswer:
    return NodeAnswer(chunk.chunk_id, node_id, text, confidence, latency_ms, error=error)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("$1,000.00", id="currency-separators-decimals"),
        pytest.param("1000", id="bare"),
        pytest.param("The answer is 1000.", id="sentence"),
        pytest.param("1,000", id="thousands-separator"),
        pytest.param("  1000  ", id="padded"),
        pytest.param("Answer: 1000 dollars", id="answer-marker-with-unit"),
        pytest.param("10% of 10000 is 1000", id="working-then-result"),
        pytest.param("900 + 100 = 1000", id="equation"),
        pytest.param("The total is $1,000.", id="total"),
    ],
)
def test_math_answers_normalize_to_one_number(text: str) -> None:
    assert normalize_answer(text, Operation.MATH_OP) == "num:1000"


@pytest.mark.parametrize(
    ("text", "operation", "expected"),
    [
        pytest.param("1000", Operation.GENERAL_OP, "num:1000", id="numeric-only-any-operation"),
        pytest.param("$1,000.00", Operation.SEARCH_OP, "num:1000", id="currency-any-operation"),
        pytest.param("-5", Operation.GENERAL_OP, "num:-5", id="negative"),
        pytest.param("3.50", Operation.MATH_OP, "num:3.5", id="decimal"),
        pytest.param("100 dollars", Operation.GENERAL_OP, "text:100 dollars", id="number-with-words-is-text"),
        pytest.param("It is 42", Operation.SEARCH_OP, "text:it is 42", id="sentence-is-text-outside-math"),
        pytest.param("no number here", Operation.MATH_OP, "text:no number here", id="math-without-number"),
        pytest.param("Paris is the capital.", Operation.SEARCH_OP, "text:paris is the capital", id="text"),
    ],
)
def test_normalize_answer(text: str, operation: Operation, expected: str) -> None:
    assert normalize_answer(text, operation) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1000", 1000.0, id="bare"),
        pytest.param("$1,000.00", 1000.0, id="currency"),
        pytest.param("First 5, then 7, so 9", 9.0, id="last-number"),
        pytest.param("The answer is 12, not 15", 12.0, id="marker-beats-last"),
        pytest.param("3 * 4 = 12 and 12 + 1 = 13", 13.0, id="last-marker"),
        pytest.param("Result: -7.5", -7.5, id="negative-decimal"),
        pytest.param(".5", 0.5, id="leading-dot"),
        pytest.param("no digits", None, id="none"),
        pytest.param("", None, id="empty"),
    ],
)
def test_final_number(text: str, expected: float | None) -> None:
    assert final_number(text) == expected


def test_equivalent_math_answers_form_one_group() -> None:
    answers = [_answer("a", "$1,000.00"), _answer("b", "1000"), _answer("c", "The answer is 1000.")]

    result = assemble_chunk(MATH, answers, {"a": 0.5, "b": 0.5, "c": 0.5})

    assert result.groups == 1
    assert result.unanimous
    assert result.agreement == pytest.approx(1.0)
    assert {v.group for v in result.votes} == {0}
    assert set(result.winning_node_ids) == {"a", "b", "c"}


@pytest.mark.parametrize(
    "texts",
    [
        pytest.param(["Paris is the capital.", "  paris IS the capital "], id="case-whitespace"),
        pytest.param(["Paris is the capital.", "Paris, is the capital!"], id="punctuation"),
        pytest.param(["PARIS", "paris."], id="one-word"),
        pytest.param(["The capital is Paris", "the capital is paris, france"], id="word-overlap-above-threshold"),
    ],
)
def test_equivalent_text_answers_form_one_group(texts: list[str]) -> None:
    answers = [_answer(f"n{i}", t, chunk=SEARCH) for i, t in enumerate(texts)]

    result = assemble_chunk(SEARCH, answers, {a.node_id: 0.5 for a in answers})

    assert result.groups == 1
    assert result.unanimous


@pytest.mark.parametrize(
    ("texts", "operation"),
    [
        pytest.param(["Paris", "Berlin"], Operation.SEARCH_OP, id="different-words"),
        pytest.param(["100", "1000"], Operation.MATH_OP, id="different-numbers"),
        pytest.param(["100", "hundred"], Operation.GENERAL_OP, id="number-vs-text"),
    ],
)
def test_different_answers_form_separate_groups(texts: list[str], operation: Operation) -> None:
    chunk = Chunk("c9", operation, "q", 1, 0.5)
    answers = [NodeAnswer("c9", f"n{i}", t, 1.0, 10.0) for i, t in enumerate(texts)]

    result = assemble_chunk(chunk, answers, {a.node_id: 0.5 for a in answers})

    assert result.groups == len(texts)
    assert not result.unanimous


@pytest.mark.parametrize(
    ("answers", "fitness", "winner", "answer"),
    [
        pytest.param(
            [_answer("weak", "90"), _answer("strong", "100")],
            {"weak": 0.2, "strong": 0.9},
            "strong",
            "100",
            id="high-fitness-beats-low",
        ),
        pytest.param(
            [_answer("strong", "100"), _answer("weak", "90")],
            {"weak": 0.2, "strong": 0.9},
            "strong",
            "100",
            id="high-fitness-beats-low-any-order",
        ),
        pytest.param(
            [_answer("strong", "100"), _answer("w1", "90"), _answer("w2", "$90")],
            {"strong": 0.7, "w1": 0.4, "w2": 0.4},
            "w1",
            "90",
            id="two-agreeing-weak-beat-one-strong",
        ),
        pytest.param(
            [_answer("strong", "100"), _answer("w1", "90"), _answer("w2", "90")],
            {"strong": 0.9, "w1": 0.4, "w2": 0.4},
            "strong",
            "100",
            id="two-weak-lose-to-much-stronger",
        ),
        pytest.param(
            [_answer("sure", "90", 0.9), _answer("unsure", "100", 0.3)],
            {"sure": 0.5, "unsure": 0.5},
            "sure",
            "90",
            id="confidence-breaks-equal-fitness",
        ),
        pytest.param(
            [_answer("fit-unsure", "90", 0.2), _answer("unfit-sure", "100", 1.0)],
            {"fit-unsure": 0.9, "unfit-sure": 0.3},
            "unfit-sure",
            "100",
            id="fitness-times-confidence",
        ),
        pytest.param(
            [_answer("a", "90"), _answer("b", "100")], {"a": 0.5, "b": 0.5}, "a", "90", id="tie-goes-to-first-group"
        ),
        pytest.param(
            [_answer("zero", "90"), _answer("unknown", "100")],
            {"zero": 0.0},
            "zero",
            "90",
            id="zero-and-unknown-fitness-still-vote-tie-first",
        ),
    ],
)
def test_weighted_vote(answers: list[NodeAnswer], fitness: dict[str, float], winner: str, answer: str) -> None:
    result = assemble_chunk(MATH, answers, fitness)

    assert result.winner_node_id == winner
    assert result.answer == answer


@pytest.mark.parametrize(
    ("answers", "strongest", "winner"),
    [
        pytest.param([("small", "Moscow", 1.0), ("big", "Cairo", 0.4)], {"big"}, "big", id="split-strongest-wins"),
        pytest.param([("small", "Moscow", 1.0), ("big", "Cairo", 0.4)], set(), "small",
                     id="split-no-strength-known-weight-wins"),
        pytest.param([("small-a", "Moscow", 1.0), ("small-b", "Moscow", 1.0), ("big", "Cairo", 1.0)], {"big"},
                     "small-a", id="agreement-is-not-a-split-weight-decides"),
        pytest.param([("small", "Moscow", 1.0), ("big-a", "Cairo", 0.3), ("big-b", "Paris", 0.9)],
                     {"big-a", "big-b"}, "big-b", id="split-heaviest-of-the-strongest"),
    ],
)
def test_a_split_vote_serves_the_strongest_models_answer(
        answers: list[tuple[str, str, float]], strongest: set[str], winner: str) -> None:
    votes = [_answer(node, text, confidence, chunk=SEARCH) for node, text, confidence in answers]

    result = assemble_chunk(SEARCH, votes, {node: 0.5 for node, _, _ in answers}, strongest=strongest)

    assert result.winner_node_id == winner


def test_vote_weight_is_fitness_times_confidence() -> None:
    result = assemble_chunk(MATH, [_answer("a", "90", 0.8), _answer("b", "90", 0.5)], {"a": 0.6, "b": 0.9})

    assert [(v.node_id, v.weight) for v in result.votes] == [("a", pytest.approx(0.48)), ("b", pytest.approx(0.45))]


def test_winner_is_the_heaviest_member_of_the_winning_group() -> None:
    answers = [_answer("light", "The answer is 90."), _answer("heavy", "$90"), _answer("other", "100")]

    result = assemble_chunk(MATH, answers, {"light": 0.3, "heavy": 0.8, "other": 0.5})

    assert (result.winner_node_id, result.answer) == ("heavy", "$90")
    assert set(result.winning_node_ids) == {"light", "heavy"}


@pytest.mark.parametrize(
    ("answers", "unanimous"),
    [
        pytest.param([_answer("a", "90")], False, id="single-answer"),
        pytest.param([_answer("a", "90"), _answer("b", "90.0")], True, id="two-agreeing"),
        pytest.param([_answer("a", "90"), _answer("b", "90"), _answer("c", "90")], True, id="three-agreeing"),
        pytest.param([_answer("a", "90"), _answer("b", "91")], False, id="two-disagreeing"),
        pytest.param([_answer("a", "90"), _answer("b", "", error="timeout")], False, id="one-valid-one-failed"),
        pytest.param(
            [_answer("a", "90"), _answer("b", "90"), _answer("c", "", error="timeout")],
            True,
            id="two-agreeing-one-failed",
        ),
        pytest.param([_answer("a", "90"), _answer("b", "   ")], False, id="one-valid-one-empty"),
    ],
)
def test_unanimous_needs_two_valid_answers_in_one_group(answers: list[NodeAnswer], unanimous: bool) -> None:
    result = assemble_chunk(MATH, answers, {a.node_id: 0.5 for a in answers})

    assert result.unanimous is unanimous


@pytest.mark.parametrize(
    ("answers", "fitness", "agreement"),
    [
        pytest.param([_answer("a", "90")], {"a": 0.5}, 1.0, id="single"),
        pytest.param([_answer("a", "90"), _answer("b", "100")], {"a": 0.6, "b": 0.2}, 0.6 / 0.8, id="two-groups"),
        pytest.param(
            [_answer("a", "90"), _answer("b", "90"), _answer("c", "100")],
            {"a": 0.3, "b": 0.3, "c": 0.4},
            0.6 / 1.0,
            id="group-share",
        ),
        pytest.param(
            [_answer("a", "90", 0.5), _answer("b", "100", 1.0)], {"a": 0.8, "b": 0.2}, 0.4 / 0.6, id="confidence-counts"
        ),
        pytest.param(
            [_answer("a", "90"), _answer("b", "", error="boom")],
            {"a": 0.5, "b": 0.9},
            1.0,
            id="failed-weight-not-in-total",
        ),
    ],
)
def test_agreement_is_winner_weight_share(
    answers: list[NodeAnswer], fitness: dict[str, float], agreement: float
) -> None:
    result = assemble_chunk(MATH, answers, fitness)

    assert result.agreement == pytest.approx(agreement)
    assert result.agreement == pytest.approx(
        sum(v.weight for v in result.votes if v.node_id in result.winning_node_ids)
        / sum(v.weight for v in result.votes)
    )


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        pytest.param(_answer("bad", "1000000", error="stream reset"), "stream reset", id="failed-with-partial-text"),
        pytest.param(_answer("bad", "", error="deadline exceeded"), "deadline exceeded", id="failed-empty"),
        pytest.param(_answer("bad", ""), "empty answer", id="empty"),
        pytest.param(_answer("bad", " \n\t "), "empty answer", id="whitespace"),
    ],
)
def test_failed_and_empty_answers_get_no_vote(bad: NodeAnswer, error: str) -> None:
    result = assemble_chunk(MATH, [bad, _answer("good", "90")], {"bad": 1.0, "good": 0.1})

    bad_vote = next(v for v in result.votes if v.node_id == "bad")
    assert (bad_vote.group, bad_vote.weight, bad_vote.error) == (-1, 0.0, error)
    assert (result.winner_node_id, result.answer, result.groups) == ("good", "90", 1)
    assert result.winning_node_ids == ("good",)
    assert [v.node_id for v in result.votes] == ["bad", "good"]  # every answer is reported


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param([], id="no-answers"),
        pytest.param([_answer("a", "", error="timeout")], id="one-failed"),
        pytest.param([_answer("a", "90", error="reset"), _answer("b", "")], id="failed-and-empty"),
        pytest.param([_answer("a", "  "), _answer("b", "\n")], id="all-blank"),
    ],
)
def test_no_usable_answer_raises(answers: list[NodeAnswer]) -> None:
    with pytest.raises(AssemblyError, match="no usable answer for chunk c1"):
        assemble_chunk(MATH, answers, {"a": 0.9, "b": 0.9})


def test_programs_that_all_failed_are_judged_and_the_exact_value_is_served() -> None:
    """Every node's program failed: each is a wrong answer (not a network failure), so the coordinator's
    exact value is served and says so, instead of the query failing."""
    failed = [NodeAnswer("c1", n, "answer = 1/0", 1.0, 5.0, error="its program did not compute a number (boom)",
                         program="its program did not compute a number (boom)", program_failed=True)
              for n in ("a", "b")]
    result = assemble_chunk(MATH, failed, {"a": 0.9, "b": 0.9}, expected=90.0)
    assert result.checked_by == "coordinator" and result.value == 90.0
    with pytest.raises(AssemblyError):  # the same failures, but of the stream: nothing was judged
        assemble_chunk(MATH, [replace(a, program_failed=False) for a in failed], {"a": 0.9, "b": 0.9}, expected=90.0)


@pytest.mark.parametrize(
    ("answers", "fitness", "expected", "winner"),
    [
        pytest.param(
            [_answer("s1", "1001"), _answer("s2", "1001"), _answer("weak", "The answer is $1,000.")],
            {"s1": 0.9, "s2": 0.9, "weak": 0.05},
            1000.0,
            "weak",
            id="verified-beats-more-weight",
        ),
        pytest.param(
            [_answer("strong", "999"), _answer("weak", "1000", 0.1)],
            {"strong": 1.0, "weak": 0.01},
            1000.0,
            "weak",
            id="verified-beats-tiny-weight",
        ),
        pytest.param(
            [_answer("strong", "999"), _answer("weak", "1000")],
            {"strong": 0.9, "weak": 0.1},
            1234.0,
            "strong",
            id="no-group-matches-vote-decides",
        ),
        pytest.param(
            [_answer("a", "0.5"), _answer("b", "2")], {"a": 0.1, "b": 0.9}, 0.5, "a", id="fractional-expected"
        ),
    ],
)
def test_expected_value_makes_matching_group_win(
    answers: list[NodeAnswer], fitness: dict[str, float], expected: float, winner: str
) -> None:
    result = assemble_chunk(MATH, answers, fitness, reference_key(Operation.MATH_OP, expected))

    assert result.winner_node_id == winner


def test_expected_win_reports_true_weight_share() -> None:
    answers = [_answer("s1", "1001"), _answer("weak", "1000")]

    result = assemble_chunk(MATH, answers, {"s1": 0.9, "weak": 0.1}, reference_key(Operation.MATH_OP, 1000.0))

    assert result.answer == "1000"
    assert result.agreement == pytest.approx(0.1)
    assert not result.unanimous


def test_numbers_differing_beyond_six_digits_are_different_answers() -> None:
    chunk = Chunk("c1", Operation.MATH_OP, "What is 1234.5 * 100.1?", 8, 0.6)
    answers = [_answer("right", "123573.45"), _answer("rounded", "123573")]

    result = assemble_chunk(chunk, answers, {"right": 0.3, "rounded": 0.9}, reference_key(Operation.MATH_OP, 123573.45))

    assert result.groups == 2
    assert (result.winner_node_id, result.answer) == ("right", "123573.45")


def test_a_too_long_answer_gets_no_vote_and_does_not_crash() -> None:
    answers = [NodeAnswer("c1", "flood", "word " * 5000, 0.9, 10.0), NodeAnswer("c1", "ok", "Paris", 0.9, 10.0)]
    chunk = Chunk("c1", Operation.SEARCH_OP, "Find the capital of France", 5, 0.35)
    result = assemble_chunk(chunk, answers, {"flood": 0.9, "ok": 0.5})
    assert result.answer == "Paris"
    assert next(v for v in result.votes if v.node_id == "flood").error == "too long"


def test_an_answer_that_only_repeats_the_question_or_instruction_gets_no_vote_and_settles_nothing() -> None:
    from dellm.coordinator.pipeline.assemble import is_settled
    from dellm.coordinator.pipeline.operations import OPERATIONS

    search = Chunk("c2", Operation.SEARCH_OP, "find best savings accounts", 4, 0.4)
    echo = OPERATIONS[Operation.SEARCH_OP].instruction  # what the 0.5B nodes of make demo once answered
    answers = [_answer("a", echo), _answer("b", echo.upper()), _answer("c", "Ally Bank, Marcus, Discover")]
    assert not is_settled(search, answers[:2], wanted=2)  # two echoes agreeing prove nothing
    result = assemble_chunk(search, answers, {"a": 0.9, "b": 0.9, "c": 0.1})
    assert result.winner_node_id == "c" and [v.error for v in result.votes[:2]] == ["it only repeats the question"] * 2
    # short answers, and numbers, are answers even when the question holds their words
    capital = Chunk("c1", Operation.GENERAL_OP, "Is Paris the capital of France?", 6, 0.3)
    assert assemble_chunk(capital, [_answer("a", "Paris is the capital of France.")], {"a": 0.5}).winner_node_id == "a"
    japan = Chunk("c1", Operation.GENERAL_OP, "Name the capital of Japan", 5, 0.3)
    assert assemble_chunk(japan, [_answer("a", "The capital of Japan"), _answer("b", "Tokyo")],
                          {"a": 0.9, "b": 0.1}).winner_node_id == "b"


@pytest.mark.parametrize(("question", "texts", "groups"), [
    ("what is the currency of Japan?", ["Japanese currency is the yen.", "The currency of Japan is the yen."], 1),
    ("name the capital of Japan", ["The capital of Japan is Tokyo.", "Tokyo"], 1),
    ("name the capital of Japan", ["The capital of Japan is Tokyo.", "The capital of Japan is Kyoto."], 2),
    ("who wrote Hamlet?", ["Hamlet was written by William Shakespeare.", "Shakespeare wrote Hamlet"], 1),
    ("Which is larger, Jupiter or Saturn?", ["Jupiter", "Saturn"], 2),  # only question words: kept whole
    ("Is Paris the capital of France?", ["Yes, Paris is the capital of France.", "No."], 2),
])
def test_words_that_restate_the_question_do_not_split_or_join_a_vote(
        question: str, texts: list[str], groups: int) -> None:
    chunk = Chunk("c2", Operation.GENERAL_OP, question, 5, 0.3)
    answers = [NodeAnswer(chunk.chunk_id, f"n{i}", text, 1.0, 100.0) for i, text in enumerate(texts)]

    assert assemble_chunk(chunk, answers, {}).groups == groups
