"""Stage 1 (decompose): table-driven tests of the rule-based planner. Pure, no network."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from dellm.coordinator.config import DecomposeConfig
from dellm.coordinator.errors import InvalidQueryError
from dellm.coordinator.pipeline.decompose import decompose, estimate_complexity, validate_plan
from dellm.coordinator.pipeline.operations import Operation, classify
from dellm.coordinator.types import Chunk, Plan

SEED_QUERY = "Calculate 10% interest on $1000 then find best savings accounts"
GSM8K_DIR = (Path(__file__).parents[3] / ".." / "shared" / "data" / "gsm8k").resolve()
GSM8K_FILE = GSM8K_DIR / "test_socratic.jsonl"
GSM8K_LINES = 50


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _shape(plan: Plan) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.chunk_id, c.text, c.depends_on) for c in plan.chunks]


def _chunk(chunk_id: str, depends_on: tuple[str, ...] = (), text: str = "find something") -> Chunk:
    return Chunk(chunk_id, Operation.SEARCH_OP, text, 2, 0.35, depends_on)


def test_seed_query_is_math_then_dependent_search() -> None:
    plan = decompose(SEED_QUERY)

    assert plan.query == SEED_QUERY
    assert [(c.chunk_id, c.operation, c.text, c.depends_on) for c in plan.chunks] == [
        ("c1", Operation.MATH_OP, "Calculate 10% interest on $1000", ()),
        ("c2", Operation.SEARCH_OP, "find best savings accounts", ("c1",)),
    ]
    validate_plan(plan)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "Find the population of France and find the population of Spain",
            [("c1", "Find the population of France", ()), ("c2", "find the population of Spain", ())],
            id="and-two-searches",
        ),
        pytest.param(
            "Calculate 5 + 3 and compute 7 * 2",
            [("c1", "Calculate 5 + 3", ()), ("c2", "compute 7 * 2", ())],
            id="and-two-maths",
        ),
        pytest.param(
            "Calculate 12 * 7 + 3 and translate hello into French",
            [("c1", "Calculate 12 * 7 + 3", ()), ("c2", "translate hello into French", ())],
            id="and-mixed-operations",
        ),
        pytest.param(
            "Write a poem about cats and also describe a dog",
            [("c1", "Write a poem about cats", ()), ("c2", "describe a dog", ())],
            id="and-also",
        ),
        pytest.param(
            "Find A and find B and find C",
            [("c1", "Find A", ()), ("c2", "find B", ()), ("c3", "find C", ())],
            id="three-way-and",
        ),
        pytest.param(
            "What is the capital of France? What is the capital of Spain?",
            [("c1", "What is the capital of France?", ()), ("c2", "What is the capital of Spain?", ())],
            id="two-questions",
        ),
    ],
)
def test_independent_actions_run_in_parallel(query: str, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    plan = decompose(query)

    assert _shape(plan) == expected
    validate_plan(plan)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("Calculate 5 + 3 then find the best bank", id="then"),
        pytest.param("Calculate 5 + 3 and then find the best bank", id="and-then"),
        pytest.param("Calculate 5 + 3, then find the best bank", id="comma-then"),
        pytest.param("Calculate 5 + 3. Then find the best bank.", id="sentence-then"),
        pytest.param("Calculate 5 + 3 after that find the best bank", id="after-that"),
        pytest.param("Calculate 5 + 3. After that, find the best bank", id="sentence-after-that"),
        pytest.param("Calculate 5 + 3, based on this find the best bank", id="based-on-this"),
        pytest.param("Calculate 5 + 3 based on that find the best bank", id="based-on-that"),
        pytest.param("Calculate 5 + 3 based on the result find the best bank", id="based-on-the-result"),
        pytest.param("Calculate 5 + 3; afterwards find the best bank", id="afterwards"),
        pytest.param("Calculate 5 + 3, finally find the best bank", id="finally"),
        pytest.param("Calculate 5 + 3. Next, find the best bank", id="sentence-next"),
    ],
)
def test_sequence_words_create_a_dependency(query: str) -> None:
    plan = decompose(query)

    assert _shape(plan) == [("c1", "Calculate 5 + 3", ()), ("c2", "find the best bank", ("c1",))]
    assert [c.operation for c in plan.chunks] == [Operation.MATH_OP, Operation.SEARCH_OP]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "Find A, then find B, then find C",
            [("c1", "Find A", ()), ("c2", "find B", ("c1",)), ("c3", "find C", ("c2",))],
            id="chain-of-three",
        ),
        pytest.param(
            "Find A and find B then find C and find D",
            [
                ("c1", "Find A", ()),
                ("c2", "find B", ()),
                ("c3", "find C", ("c1", "c2")),
                ("c4", "find D", ("c1", "c2")),
            ],
            id="parallel-step-waits-for-whole-previous-step",
        ),
        pytest.param(
            "Calculate 5 + 3 then find the best bank and compare them with credit unions",
            [
                ("c1", "Calculate 5 + 3", ()),
                ("c2", "find the best bank", ("c1",)),
                ("c3", "compare them with credit unions", ("c2",)),
            ],
            id="then-plus-refers-back",
        ),
    ],
)
def test_mixed_steps_depend_on_the_previous_step(query: str, expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    plan = decompose(query)

    assert _shape(plan) == expected
    validate_plan(plan)


@pytest.mark.parametrize(
    ("query", "first", "second"),
    [
        pytest.param(
            "Find the capital of France and compare it with Berlin",
            "Find the capital of France",
            "compare it with Berlin",
            id="it",
        ),
        pytest.param(
            "Find hotels in Paris and compare them with hotels in Rome",
            "Find hotels in Paris",
            "compare them with hotels in Rome",
            id="them",
        ),
        pytest.param(
            "Write a haiku about rain and summarize it", "Write a haiku about rain", "summarize it", id="verb-it"
        ),
        pytest.param(
            "Calculate 5 + 3 and explain the result", "Calculate 5 + 3", "explain the result", id="the-result"
        ),
        pytest.param(
            "Calculate 5 + 3 and describe this number", "Calculate 5 + 3", "describe this number", id="this-number"
        ),
    ],
)
def test_conjunct_that_refers_back_depends_on_the_earlier_one(query: str, first: str, second: str) -> None:
    plan = decompose(query)

    assert _shape(plan) == [("c1", first, ()), ("c2", second, ("c1",))]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("Janet has 16 eggs. She eats 3 each morning. How many eggs are left?", id="eggs"),
        pytest.param("A shirt costs $20. It is discounted by 25%. What is the new price?", id="discount"),
        pytest.param("Mary has 3 cats. Each cat eats 2 cans a day. How many cans do they eat in a week?", id="cats"),
        pytest.param("Tom reads 10 pages a day. How many pages does he read in 7 days?", id="one-statement"),
        pytest.param("How many pages does Tom read in 7 days? He reads 10 pages a day.", id="statement-after-question"),
    ],
)
def test_word_problem_statements_stay_with_their_question(query: str) -> None:
    plan = decompose(query)

    assert len(plan.chunks) == 1
    assert plan.chunks[0].text in query  # at most trailing punctuation is trimmed
    assert _words(plan.chunks[0].text) == _words(query)
    assert plan.chunks[0].operation is Operation.MATH_OP
    assert plan.chunks[0].depends_on == ()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("hello", id="one-word"),
        pytest.param("hello there", id="greeting"),
        pytest.param("Tell me a joke", id="tell-me"),
        pytest.param("The sky is blue and the grass is green", id="and-without-actions"),
        pytest.param("...", id="only-dots"),
        pytest.param("!?", id="only-punctuation"),
        pytest.param("¿¡ ñ ü", id="non-ascii"),
    ],
)
def test_unsplittable_text_is_one_general_chunk(query: str) -> None:
    plan = decompose(query)

    assert [(c.chunk_id, c.operation, c.text, c.depends_on) for c in plan.chunks] == [
        ("c1", Operation.GENERAL_OP, query, ())
    ]
    validate_plan(plan)


def test_whitespace_is_collapsed_in_query_and_chunks() -> None:
    plan = decompose("  Calculate   5 + 3 \n\t then  find the  best bank ")

    assert plan.query == "Calculate 5 + 3 then find the best bank"
    assert [c.text for c in plan.chunks] == ["Calculate 5 + 3", "find the best bank"]


@pytest.mark.parametrize(
    ("query", "config", "reason"),
    [
        pytest.param("", None, "empty", id="empty"),
        pytest.param("   ", None, "empty", id="spaces"),
        pytest.param("\n\t \r\n", None, "empty", id="whitespace-mix"),
        pytest.param("x" * 4001, None, "4001 characters; the maximum is 4000", id="over-default-limit"),
        pytest.param(
            "Find the best bank",
            DecomposeConfig(max_query_chars=10),
            "18 characters; the maximum is 10",
            id="over-configured-limit",
        ),
    ],
)
def test_invalid_query_raises_with_a_reason(query: str, config: DecomposeConfig | None, reason: str) -> None:
    with pytest.raises(InvalidQueryError, match=re.escape(reason)):
        decompose(query, config)


def test_invalid_query_error_is_a_value_error() -> None:
    assert issubclass(InvalidQueryError, ValueError)


def test_query_at_the_length_limit_is_accepted() -> None:
    query = ("find a bank " * 400)[:4000]

    plan = decompose(query)

    assert len(query) == DecomposeConfig().max_query_chars
    assert plan.chunks


@pytest.mark.parametrize(
    ("query", "connectors"),
    [
        pytest.param("Find A and find B and find C and find D and find E", {"and"}, id="parallel"),
        pytest.param("Find A then find B then find C then find D then find E", {"then"}, id="sequential"),
        pytest.param("Find A and find B then find C and find D then find E", {"and", "then"}, id="mixed"),
    ],
)
def test_max_chunks_cap_merges_the_rest_into_the_last_chunk(query: str, connectors: set[str]) -> None:
    plan = decompose(query, DecomposeConfig(max_chunks=3))

    assert len(plan.chunks) == 3
    assert [c.chunk_id for c in plan.chunks] == ["c1", "c2", "c3"]
    kept = [w for c in plan.chunks for w in _words(c.text)]
    assert kept == [w for w in _words(query) if w not in connectors]  # every content word, in order
    assert _words(plan.chunks[-1].text) == ["find", "c", "find", "d", "find", "e"]
    validate_plan(plan)


def test_max_chunks_of_one_keeps_everything_in_one_chunk() -> None:
    plan = decompose("Find A then find B and find C", DecomposeConfig(max_chunks=1))

    assert [(c.chunk_id, c.text, c.depends_on) for c in plan.chunks] == [("c1", "Find A find B find C", ())]


PLANNED_QUERIES = [
    pytest.param(SEED_QUERY, id="seed"),
    pytest.param("Find A and find B then find C and find D then find E", id="mixed"),
    pytest.param(
        "Find A, then find B, then find C, then find D, then find E, then find F, then find G, "
        "then find H, then find I, then find J",
        id="ten-steps",
    ),
    pytest.param("Janet has 16 eggs. She eats 3 each morning. How many eggs are left?", id="word-problem"),
    pytest.param("hello", id="general"),
    pytest.param(
        "Compare 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 and 26 versus 27", id="many-numbers"
    ),
]


@pytest.mark.parametrize("query", PLANNED_QUERIES)
def test_plans_validate_with_unique_ids_and_bounded_complexity(query: str) -> None:
    plan = decompose(query)

    ids = [c.chunk_id for c in plan.chunks]
    assert ids == [f"c{n}" for n in range(1, len(ids) + 1)]
    assert len(set(ids)) == len(ids)
    assert len(plan.chunks) <= DecomposeConfig().max_chunks
    assert all(0.0 <= c.complexity <= 1.0 for c in plan.chunks)
    assert all(c.token_count > 0 for c in plan.chunks)
    validate_plan(plan)


@pytest.mark.parametrize(
    ("text", "operation", "expected"),
    [
        pytest.param("hello", Operation.GENERAL_OP, 0.3, id="general-base"),
        pytest.param("find best savings accounts", Operation.SEARCH_OP, 0.35, id="search-base"),
        pytest.param("Calculate 10% interest on $1000", Operation.MATH_OP, 0.55, id="seed-math"),
        pytest.param("Calculate 12 * 7 + 3", Operation.MATH_OP, 0.6, id="three-numbers"),
        pytest.param(" ".join(["word"] * 40), Operation.GENERATE_OP, 0.7, id="token-bonus-capped"),
        pytest.param(" ".join(str(n) for n in range(40)), Operation.COMPARE_OP, 1.0, id="capped-at-one"),
    ],
)
def test_estimate_complexity(text: str, operation: Operation, expected: float) -> None:
    assert estimate_complexity(text, operation) == pytest.approx(expected)


@pytest.mark.parametrize("operation", list(Operation), ids=str)
@pytest.mark.parametrize(
    "text",
    [pytest.param("", id="empty"), pytest.param("x", id="short"), pytest.param("1 " * 500 + "word " * 500, id="huge")],
)
def test_estimate_complexity_stays_within_unit_interval(text: str, operation: Operation) -> None:
    assert 0.0 <= estimate_complexity(text, operation) <= 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Calculate 10% interest on $1000", Operation.MATH_OP, id="calculate"),
        pytest.param("How many eggs are left?", Operation.MATH_OP, id="how-many"),
        pytest.param("what is 12 * 7", Operation.MATH_OP, id="what-is-number"),
        pytest.param("3 + 4", Operation.MATH_OP, id="bare-expression"),
        pytest.param("find best savings accounts", Operation.SEARCH_OP, id="find"),
        pytest.param("Where is the nearest bank", Operation.SEARCH_OP, id="where"),
        pytest.param("compare it with Berlin", Operation.COMPARE_OP, id="compare"),
        pytest.param("Python versus Go", Operation.COMPARE_OP, id="versus"),
        pytest.param("compare the total cost", Operation.COMPARE_OP, id="compare-beats-math"),
        pytest.param("Write a poem about cats", Operation.GENERATE_OP, id="write"),
        pytest.param("summarize it", Operation.GENERATE_OP, id="summarize"),
        pytest.param("hello there", Operation.GENERAL_OP, id="general"),
        pytest.param("", Operation.GENERAL_OP, id="empty"),
    ],
)
def test_classify(text: str, expected: Operation) -> None:
    assert classify(text) is expected


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param((_chunk("c1"),), id="single"),
        pytest.param((_chunk("c1"), _chunk("c2", ("c1",)), _chunk("c3", ("c1", "c2"))), id="chain-and-fan-in"),
        pytest.param((_chunk("c2", ("c1",)), _chunk("c1")), id="dependency-listed-later"),
        pytest.param((), id="empty-plan"),
    ],
)
def test_validate_plan_accepts_acyclic_plans(chunks: tuple[Chunk, ...]) -> None:
    validate_plan(Plan("q", chunks))


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        pytest.param((_chunk("c1", ("c2",)), _chunk("c2", ("c1",))), "cycle", id="two-cycle"),
        pytest.param((_chunk("c1", ("c1",)),), "cycle", id="self-cycle"),
        pytest.param(
            (_chunk("c1"), _chunk("c2", ("c3",)), _chunk("c3", ("c4",)), _chunk("c4", ("c2",))),
            "cycle",
            id="three-cycle-behind-a-root",
        ),
        pytest.param((_chunk("c1"), _chunk("c2", ("c9",))), "unknown chunks ['c9']", id="missing-dependency"),
        pytest.param((_chunk("c1"), _chunk("c1")), "duplicate", id="duplicate-ids"),
        pytest.param((_chunk("c1"), _chunk("c2", ("c1",)), _chunk("c2")), "duplicate", id="duplicate-ids-with-deps"),
    ],
)
def test_validate_plan_rejects_bad_plans(chunks: tuple[Chunk, ...], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_plan(Plan("q", chunks))


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("Find the best hotel for the next weekend", id="next-weekend"),
        pytest.param("Tom has 5 apples. The next day he buys 4 more. How many apples does he have?", id="next-day"),
    ],
)
def test_next_as_an_adjective_does_not_split(query: str) -> None:
    plan = decompose(query)

    assert [c.text for c in plan.chunks] == [query]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("Tom buys 3 apples and then buys 4 more. How many apples does he have?", id="and-then"),
        pytest.param("Sam walks 2 miles, then runs 3 miles. How far did he go?", id="comma-then"),
    ],
)
def test_then_inside_a_word_problem_statement_does_not_split(query: str) -> None:
    plan = decompose(query)

    assert [c.text for c in plan.chunks] == [query]


# --- real word problems: GSM8K socratic test split (questions only; answers are never read) ---


@functools.cache
def _gsm8k_questions() -> tuple[str, ...]:
    questions: list[str] = []
    with GSM8K_FILE.open(encoding="utf-8") as lines:
        for line in lines:
            if len(questions) == GSM8K_LINES:
                break
            questions.append(json.loads(line)["question"])
    return tuple(questions)


@pytest.fixture
def gsm8k_questions() -> tuple[str, ...]:
    if not GSM8K_FILE.is_file():
        pytest.skip(f"GSM8K data not found at {GSM8K_FILE} (the repo's sibling shared/data/gsm8k folder)")
    return _gsm8k_questions()


@pytest.mark.parametrize("line", range(GSM8K_LINES), ids=lambda n: f"gsm8k-line-{n + 1:02d}")
def test_gsm8k_questions_decompose_into_valid_plans(line: int, gsm8k_questions: tuple[str, ...]) -> None:
    question = gsm8k_questions[line]
    normalized = " ".join(question.split())

    plan = decompose(question)

    validate_plan(plan)
    assert 1 <= len(plan.chunks) <= DecomposeConfig().max_chunks
    question_words = set(_words(question))
    for chunk in plan.chunks:
        assert chunk.text in normalized, f"{chunk.chunk_id} is not a piece of the question: {chunk.text!r}"
        assert set(_words(chunk.text)) <= question_words
        assert 0.0 <= chunk.complexity <= 1.0


def test_gsm8k_questions_lose_no_words(gsm8k_questions: tuple[str, ...]) -> None:
    lost = {}
    for line, question in enumerate(gsm8k_questions, start=1):
        kept = {w for c in decompose(question).chunks for w in _words(c.text)}
        missing = sorted(set(_words(question)) - kept)
        if missing:
            lost[line] = missing

    assert lost == {}
