"""Stage 1 (decompose): table-driven tests of the rule-based planner. Pure, no network."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from dellm.coordinator.config import DecomposeConfig
from dellm.coordinator.errors import InvalidQueryError
from dellm.coordinator.pipeline.answers import exact_answer
from dellm.coordinator.pipeline.decompose import decompose, estimate_complexity, operation_of, validate_plan
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
    ("query", "waits"),
    [
        # a question about something it names, or arithmetic with all its numbers: runs at once
        pytest.param("Calculate 15% of 240 then name the capital of Japan", False, id="named-fact"),
        pytest.param("Divide 720 by 9, then tell me the boiling point of water in degrees Celsius", False,
                     id="named-unit"),
        pytest.param("Who wrote Hamlet? Then what is the capital of Peru?", False, id="two-questions"),
        pytest.param("Add 2 and 3, then compute 7 times 8", False, id="two-computations"),
        pytest.param("Name the largest ocean, then name the tallest mountain on Earth", False, id="fact-then-fact"),
        # anything that may use the step before still waits for it
        pytest.param("Calculate 10% interest on $1000 then find best savings accounts", True, id="seed-unnamed"),
        pytest.param("Find the capital of France, then tell me its population", True, id="its"),
        pytest.param("Name a famous painter, then list that painter's works in Paris", True, id="that"),
        pytest.param("Multiply 6 by 7, then add 8", True, id="implicit-operand"),
        pytest.param("Calculate 5 + 3, based on this find the best bank in London", True, id="based-on-named"),
        pytest.param("Calculate 5 + 3. Based on that, find a bank in London", True, id="sentence-based-on"),
        pytest.param("Find hotels in Rome then write a short review", True, id="generate-waits"),
        pytest.param("Find two cars in Berlin then compare the prices", True, id="compare-waits"),
        pytest.param("Find a recipe, then find the ingredients", True, id="unnamed-search"),
    ],
)
def test_a_self_contained_step_after_then_does_not_wait(query: str, waits: bool) -> None:
    plan = decompose(query)

    assert len(plan.chunks) == 2
    assert plan.chunks[1].depends_on == (("c1",) if waits else ())
    validate_plan(plan)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "Find a recipe, then find the ingredients, then find the cheapest shop",
            [("c1", "Find a recipe", ()), ("c2", "find the ingredients", ("c1",)),
             ("c3", "find the cheapest shop", ("c2",))],
            id="chain-of-three",
        ),
        pytest.param(
            "Find a recipe and find a wine then find the ingredients and find the cheapest shop",
            [
                ("c1", "Find a recipe", ()),
                ("c2", "find a wine", ()),
                ("c3", "find the ingredients", ("c1", "c2")),
                ("c4", "find the cheapest shop", ("c1", "c2")),
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
        pytest.param(
            "What is 500 minus 125, then divide it by 5, and what is the capital of Canada?",
            [
                ("c1", "What is 500 minus 125", ()),
                ("c2", "divide it by 5", ("c1",)),
                ("c3", "what is the capital of Canada?", ()),
            ],
            id="self-contained-conjunct-of-a-dependent-step-runs-at-once",
        ),
        pytest.param(
            "Add 14 and 29, then multiply the result by 3, and name the capital of Spain",
            [
                ("c1", "Add 14 and 29", ()),
                ("c2", "multiply the result by 3", ("c1",)),
                ("c3", "name the capital of Spain", ()),
            ],
            id="named-fact-after-a-dependent-step",
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
        # a question of quantity about two or more given numbers is a word problem, whatever else it says
        pytest.param("A ship goes 10 miles per hour from 1 to 4 PM. How long does it take to get back?",
                     Operation.MATH_OP, id="word-problem-how-long"),
        pytest.param("Bobby had 20 games but lost 5 before the comparison. How many does Bobby have?",
                     Operation.MATH_OP, id="word-problem-beats-compare"),
        pytest.param("She earns $20 an hour for 35 hours a week. What's her annual salary?", Operation.MATH_OP,
                     id="word-problem-whats-her-salary"),
        pytest.param("Which box fits if each holds 15 kg and the limit is 900 kg? How many boxes can be loaded?",
                     Operation.MATH_OP, id="word-problem-beats-which"),
        pytest.param("How long is the Nile?", Operation.GENERAL_OP, id="how-long-no-numbers"),
        pytest.param("How old was Einstein in 1921?", Operation.GENERAL_OP, id="how-old-one-number"),
    ],
)
def test_classify(text: str, expected: Operation) -> None:
    assert classify(text) is expected


# --- arithmetic typing: word operators make a chunk MATH_OP; look-alikes keep their own operation ---

WORD_OPERATOR_CHUNKS = [
    pytest.param("What is 15 plus 27", Operation.MATH_OP, id="plus"),
    pytest.param("What is -5 minus 3", Operation.MATH_OP, id="minus"),
    pytest.param("6 times 7", Operation.MATH_OP, id="times"),
    pytest.param("$12 multiplied by 4", Operation.MATH_OP, id="multiplied-by"),
    pytest.param("What is $100 divided by 4?", Operation.MATH_OP, id="divided-by"),
    pytest.param("Tell me 100 over 8", Operation.MATH_OP, id="over"),
    pytest.param("Tell me 12 squared", Operation.MATH_OP, id="squared"),
    pytest.param("Tell me 3 cubed", Operation.MATH_OP, id="cubed"),
    pytest.param("Tell me 2 to the power of 10", Operation.MATH_OP, id="to-the-power-of"),
    pytest.param("Find the square root of 144", Operation.MATH_OP, id="square-root"),
    pytest.param("Find 20 percent of 50", Operation.MATH_OP, id="percent"),
    pytest.param("What is 15% of 240", Operation.MATH_OP, id="percent-sign-of"),
    pytest.param("Calculate 10% interest on $1000", Operation.MATH_OP, id="seed-interest"),
    pytest.param("Add 250 and 175", Operation.MATH_OP, id="add"),
    pytest.param("Subtract 5 from 20", Operation.MATH_OP, id="subtract"),
    pytest.param("Multiply 6 by 7", Operation.MATH_OP, id="multiply"),
    pytest.param("Divide 100 by 8", Operation.MATH_OP, id="divide"),
    pytest.param("Double 21", Operation.MATH_OP, id="double"),
    pytest.param("Triple 7", Operation.MATH_OP, id="triple"),
    pytest.param("Tell me half of 90", Operation.MATH_OP, id="half"),
    pytest.param("Find the sum of 4 and 5", Operation.MATH_OP, id="sum"),
    pytest.param("What's the difference between 10 and 4", Operation.MATH_OP, id="difference-of-numbers"),
    pytest.param("Find the product of 2, 3 and 4", Operation.MATH_OP, id="product"),
    pytest.param("Find the average of 4, 8 and 12", Operation.MATH_OP, id="average"),
    pytest.param("Increase 200 by 15%", Operation.MATH_OP, id="increase-by"),
    # look-alikes: the same words without arithmetic
    pytest.param("find the best savings accounts", Operation.SEARCH_OP, id="search-best"),
    pytest.param("Find the top 10 movies of 2023", Operation.SEARCH_OP, id="search-top-with-numbers"),
    pytest.param("Which city is the largest", Operation.SEARCH_OP, id="search-which"),
    pytest.param("What's the difference between cats and dogs", Operation.COMPARE_OP, id="difference-of-things"),
    pytest.param("Add milk to the shopping list", Operation.SEARCH_OP, id="add-to-a-list"),
    pytest.param("Book a double room for 2 nights", Operation.GENERAL_OP, id="double-room"),
    pytest.param("Write a poem about the square root of love", Operation.GENERATE_OP, id="square-root-of-words"),
    pytest.param("Translate half of the people into French", Operation.GENERATE_OP, id="half-of-words"),
    pytest.param("Tell me 3 good times to visit Paris", Operation.GENERAL_OP, id="times-as-a-noun"),
]


@pytest.mark.parametrize(("text", "expected"), WORD_OPERATOR_CHUNKS)
def test_a_chunk_with_word_arithmetic_is_typed_math(text: str, expected: Operation) -> None:
    plan = decompose(text)

    assert [(c.text, c.operation) for c in plan.chunks] == [(text, expected)]


@pytest.mark.parametrize(("text", "expected"), WORD_OPERATOR_CHUNKS)
def test_math_keywords_cover_word_operators_in_arithmetic_context(text: str, expected: Operation) -> None:
    assert (classify(text) is Operation.MATH_OP) is (expected is Operation.MATH_OP)


@pytest.mark.parametrize(
    ("text", "dependent", "expected"),
    [
        pytest.param("multiply the result by 2", True, Operation.MATH_OP, id="the-result"),
        pytest.param("add 100 to that result", True, Operation.MATH_OP, id="that-result"),
        pytest.param("divide by 4", True, Operation.MATH_OP, id="implicit-divide"),
        pytest.param("add 8", True, Operation.MATH_OP, id="implicit-add"),
        pytest.param("take the square root", True, Operation.MATH_OP, id="implicit-root"),
        pytest.param("take 20% of that", True, Operation.MATH_OP, id="percent-of-that"),
        pytest.param("double it", True, Operation.MATH_OP, id="double-it"),
        pytest.param("add 8", False, Operation.MATH_OP, id="implicit-without-dependency-by-keywords"),
        pytest.param("name the capital of Japan", True, Operation.GENERAL_OP, id="dependent-non-math"),
        pytest.param("compare it with Berlin", True, Operation.COMPARE_OP, id="dependent-compare"),
        pytest.param("summarize it", True, Operation.GENERATE_OP, id="dependent-generate"),
        # nothing to compute and no earlier result: a fact with a numeric answer
        pytest.param("How many days are in a leap year?", False, Operation.GENERAL_OP, id="numeric-fact"),
        pytest.param("How many fees did they charge him?", True, Operation.MATH_OP, id="story-step-on-a-result"),
        pytest.param("Sam has 16 eggs and eats 3. How many are left?", False, Operation.MATH_OP, id="word-problem"),
    ],
)
def test_operation_of_a_dependent_chunk(text: str, dependent: bool, expected: Operation) -> None:
    assert operation_of(text, dependent) is expected


def _chained_values(plan: Plan) -> list[float | None]:
    """Each chunk's exact value, with the value of its last dependency as the prior (as the pipeline does)."""
    values: dict[str, float | None] = {}
    for chunk in plan.chunks:
        prior = values[chunk.depends_on[-1]] if chunk.depends_on else None
        values[chunk.chunk_id] = exact_answer(chunk.text, prior)
    return [values[c.chunk_id] for c in plan.chunks]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param(
            "Calculate 15% of 240 then name the capital of Japan",
            [("Calculate 15% of 240", (Operation.MATH_OP,), (), 36.0),
             ("name the capital of Japan", (Operation.SEARCH_OP, Operation.GENERAL_OP), (), None)],
            id="math-then-question",
        ),
        pytest.param(
            "What is 123 plus 456, then multiply the result by 2",
            [("What is 123 plus 456", (Operation.MATH_OP,), (), 579.0),
             ("multiply the result by 2", (Operation.MATH_OP,), ("c1",), 1158.0)],
            id="then-multiply-the-result",
        ),
        pytest.param(
            "Add 250 and 175 and then add 100 to that result",
            [("Add 250 and 175", (Operation.MATH_OP,), (), 425.0),
             ("add 100 to that result", (Operation.MATH_OP,), ("c1",), 525.0)],
            id="and-then-add-to-that-result",
        ),
        pytest.param(
            "What is 1000 divided by 8, then divide the result by 5",
            [("What is 1000 divided by 8", (Operation.MATH_OP,), (), 125.0),
             ("divide the result by 5", (Operation.MATH_OP,), ("c1",), 25.0)],
            id="then-divide-the-result",
        ),
        pytest.param(
            "Multiply 6 by 7, then add 8",
            [("Multiply 6 by 7", (Operation.MATH_OP,), (), 42.0),
             ("add 8", (Operation.MATH_OP,), ("c1",), 50.0)],
            id="implicit-operand",
        ),
        pytest.param(
            "What is 50 divided by 2? Multiply that by 3.",
            [("What is 50 divided by 2?", (Operation.MATH_OP,), (), 25.0),
             ("Multiply that by 3", (Operation.MATH_OP,), ("c1",), 75.0)],
            id="second-sentence-refers-back",
        ),
        pytest.param(
            "Calculate 5 + 3 and double it",
            [("Calculate 5 + 3", (Operation.MATH_OP,), (), 8.0),
             ("double it", (Operation.MATH_OP,), ("c1",), 16.0)],
            id="and-double-it",
        ),
        pytest.param(
            "First, add 3 and 4. Then multiply the result by 5.",
            [("First, add 3 and 4", (Operation.MATH_OP,), (), 7.0),
             ("multiply the result by 5", (Operation.MATH_OP,), ("c1",), 35.0)],
            id="first-then",
        ),
        pytest.param(
            "What is 5 plus 5? Then multiply that by 10. Then subtract 7 from the result.",
            [("What is 5 plus 5?", (Operation.MATH_OP,), (), 10.0),
             ("multiply that by 10", (Operation.MATH_OP,), ("c1",), 100.0),
             ("subtract 7 from the result", (Operation.MATH_OP,), ("c2",), 93.0)],
            id="chain-of-three",
        ),
        pytest.param(
            "Multiply 12 by 8, subtract 16 from it, and then divide by 4",
            [("Multiply 12 by 8", (Operation.MATH_OP,), (), 96.0),
             ("subtract 16 from it", (Operation.MATH_OP,), ("c1",), 80.0),
             ("divide by 4", (Operation.MATH_OP,), ("c2",), 20.0)],
            id="comma-step-refers-back",
        ),
        pytest.param(
            "Double 65, then add 20% of the result to it",
            [("Double 65", (Operation.MATH_OP,), (), 130.0),
             ("add 20% of the result to it", (Operation.MATH_OP,), ("c1",), 156.0)],
            id="add-a-share-of-the-result",
        ),
        pytest.param(
            "What is the average of 12, 18 and 27, and what is 5 cubed?",
            [("What is the average of 12, 18 and 27", (Operation.MATH_OP,), (), 19.0),
             ("what is 5 cubed?", (Operation.MATH_OP,), (), 125.0)],
            id="list-inside-the-first-of-two-questions",
        ),
        pytest.param(
            "Work out 999 plus 1 and 50 times 50",
            [("Work out 999 plus 1", (Operation.MATH_OP,), (), 1000.0),
             ("50 times 50", (Operation.MATH_OP,), (), 2500.0)],
            id="two-computations-joined-by-and",
        ),
        pytest.param(
            "Add 1,275 and 3,490 and name the author of the novel 1984",
            [("Add 1,275 and 3,490", (Operation.MATH_OP,), (), 4765.0),
             ("name the author of the novel 1984", (Operation.SEARCH_OP, Operation.GENERAL_OP), (), None)],
            id="add-list-then-question",
        ),
        pytest.param(
            "Who wrote Romeo and Juliet, and what is 250 minus 87?",
            [("Who wrote Romeo and Juliet", (Operation.SEARCH_OP,), (), None),
             ("what is 250 minus 87?", (Operation.MATH_OP,), (), 163.0)],
            id="and-inside-a-title",
        ),
        pytest.param(
            "Find 15% of 200, then find the best savings accounts",
            [("Find 15% of 200", (Operation.MATH_OP,), (), 30.0),
             ("find the best savings accounts", (Operation.SEARCH_OP,), ("c1",), None)],
            id="find-percent-then-search",
        ),
    ],
)
def test_compound_arithmetic_plans(
    query: str, expected: list[tuple[str, tuple[Operation, ...], tuple[str, ...], float | None]]
) -> None:
    plan = decompose(query)

    validate_plan(plan)
    assert [(c.text, c.depends_on) for c in plan.chunks] == [(text, deps) for text, _, deps, _ in expected]
    assert all(c.operation in allowed for c, (_, allowed, _, _) in zip(plan.chunks, expected, strict=True))
    assert _chained_values(plan) == [value for *_, value in expected]


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
        pytest.param("Tom likes to find shells and write poems", id="statement-with-action-words"),
        pytest.param("Find hotels in Paris, London and Rome", id="comma-list-of-objects"),
        pytest.param("Add 1, 2, 3 and 4", id="comma-list-of-numbers"),
    ],
)
def test_conjunctions_without_a_new_action_do_not_split(query: str) -> None:
    plan = decompose(query)

    assert [c.text for c in plan.chunks] == [query]


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


@pytest.mark.parametrize("query", [
    pytest.param("When Ana bakes bread, it loses a third of its weight. Each loaf starts at 900 grams. "
                 "How much does a baked loaf weigh?", id="statement-opening-with-when"),
    pytest.param("Mrs. Lee has a budget of $500. A lamp costs $120 and a desk $310. "
                 "How much more than the lamp is the desk in Mrs. Lee's order?", id="title-before-a-name"),
    pytest.param("If a gym charged Tom $40 a month for half a year and then charged him 10% less for the rest "
                 "of the year, calculate what he paid in all.", id="then-inside-a-condition"),
    pytest.param("Kim has three times as many stamps as Joe. Joe has twelve stamps. How many do they have "
                 "together?", id="numbers-in-words"),
    pytest.param("A lift can carry at most 800 kg. Each crate weighs 45 kg and the operator weighs 80 kg. "
                 "What is the maximum number of crates it can carry?", id="maximum-number"),
    pytest.param("Sam walked 3 miles. Then he ran 2 miles more than he walked. How far did he go?",
                 id="then-opening-a-statement"),
])
def test_a_word_problem_stays_one_math_chunk(query: str) -> None:
    plan = decompose(query)

    assert [(c.operation, c.depends_on) for c in plan.chunks] == [(Operation.MATH_OP, ())], plan.chunks
