"""answers.exact_answer: the one computation a chunk asks for, read exactly or not at all. Pure, no network."""

from __future__ import annotations

import math

import pytest

from dellm.coordinator.pipeline.answers import (
    exact_answer,
    prior_value,
    reads_arithmetic,
    refers_to_prior,
    rerun_worked_steps,
)

# (text, prior, expected value): every word operator, number forms, and the dependent forms that work on
# the result of the step a chunk depends on.
READABLE = [
    # written expressions
    pytest.param("What is 12 * 7 + 3?", None, 87.0, id="symbols-precedence"),
    pytest.param("Compute 3 * (4 + 5)", None, 27.0, id="brackets"),
    pytest.param("15 plus 27", None, 42.0, id="plus"),
    pytest.param("What is 100 minus 37?", None, 63.0, id="minus"),
    pytest.param("What is 6 times 7?", None, 42.0, id="times"),
    pytest.param("What is 6 multiplied by 7?", None, 42.0, id="multiplied-by"),
    pytest.param("What is 100 divided by 4?", None, 25.0, id="divided-by"),
    pytest.param("What is 100 over 8?", None, 12.5, id="over"),
    pytest.param("What is 10 plus 5 minus 3?", None, 12.0, id="one-precedence-level-left-to-right"),
    pytest.param("What is 8 divided by 2 times 4?", None, 16.0, id="divided-then-times-left-to-right"),
    pytest.param("What is (3 plus 4) times 2?", None, 14.0, id="brackets-make-spelled-mix-clear"),
    pytest.param("What is 5 squared?", None, 25.0, id="squared"),
    pytest.param("What is 3 cubed minus 7?", None, 20.0, id="cubed-then-minus"),
    pytest.param("What is 2 to the power of 10?", None, 1024.0, id="to-the-power-of"),
    pytest.param("2 raised to 8", None, 256.0, id="raised-to"),
    pytest.param("What is 2^64?", None, 2.0**64, id="largest-allowed-exponent"),
    pytest.param("What is the square root of 144?", None, 12.0, id="square-root-of"),
    pytest.param("sqrt(16) + 9", None, 13.0, id="sqrt-call"),
    pytest.param("What is the cube root of 27?", None, 3.0, id="cube-root-of"),
    # phrases
    pytest.param("Add 250 and 175", None, 425.0, id="add-and"),
    pytest.param("Add 7 to 8", None, 15.0, id="add-to"),
    pytest.param("Add 1, 2, 3 and 4", None, 10.0, id="add-list"),
    pytest.param("Sum 5 and 6", None, 11.0, id="sum-verb"),
    pytest.param("What is the sum of 4 and 5?", None, 9.0, id="sum-of"),
    pytest.param("the sum of 1, 2, and 3", None, 6.0, id="sum-of-list-oxford-comma"),
    pytest.param("Subtract 5 from 20", None, 15.0, id="subtract-from"),
    pytest.param("What is the difference between 10 and 4?", None, 6.0, id="difference-between"),
    pytest.param("Multiply 6 by 7", None, 42.0, id="multiply-by"),
    pytest.param("Multiply 6 and 7", None, 42.0, id="multiply-and"),
    pytest.param("What is the product of 2, 3 and 4?", None, 24.0, id="product-of"),
    pytest.param("Divide 100 by 8", None, 12.5, id="divide-by"),
    pytest.param("What is the quotient of 9 and 4?", None, 2.25, id="quotient-of"),
    pytest.param("Double 21", None, 42.0, id="double"),
    pytest.param("What is twice 13?", None, 26.0, id="twice"),
    pytest.param("Triple 7", None, 21.0, id="triple"),
    pytest.param("What is half of 90?", None, 45.0, id="half-of"),
    pytest.param("What is a third of 30?", None, 10.0, id="a-third-of"),
    pytest.param("What is the average of 4, 8 and 12?", None, 8.0, id="average-of"),
    pytest.param("mean of 1, 2, 3 and 4", None, 2.5, id="mean-of"),
    pytest.param("What is 15% of 240", None, 36.0, id="percent-sign-of"),
    pytest.param("What is 20 percent of 50?", None, 10.0, id="percent-word-of"),
    pytest.param("Calculate 10% interest on $1000", None, 100.0, id="seed-percent-interest-on"),
    pytest.param("Calculate 15% sales tax on $80", None, 12.0, id="two-word-qualifier"),
    pytest.param("Increase 200 by 15%", None, 230.0, id="increase-by-percent"),
    pytest.param("Decrease 80 by 25%", None, 60.0, id="decrease-by-percent"),
    pytest.param("What is 80 increased by 5%?", None, 84.0, id="increased-by-percent"),
    pytest.param("What is 20 reduced by 5?", None, 15.0, id="reduced-by-amount"),
    pytest.param("What is 20% more than 50?", None, 60.0, id="percent-more-than"),
    pytest.param("What is 20% less than 50?", None, 40.0, id="percent-less-than"),
    pytest.param("Add 10% to 50", None, 55.0, id="add-percent-to"),
    # number forms
    pytest.param("What is $1,200 plus $300?", None, 1500.0, id="dollars-and-thousands"),
    pytest.param("What is 1,000,000 divided by 8?", None, 125_000.0, id="millions-separator"),
    pytest.param("What is 5 km plus 3 km?", None, 8.0, id="same-units"),
    pytest.param("What is 25% of 80 dollars?", None, 20.0, id="unit-word"),
    pytest.param("What is -12 plus 20?", None, 8.0, id="negative-operand"),
    pytest.param("What is 10 minus -3?", None, 13.0, id="minus-negative"),
    pytest.param("What is 0.5 times 0.25?", None, 0.125, id="decimals"),
    pytest.param("Calculate the tip: 15% of $45.50", None, 6.825, id="decimal-dollars"),
    pytest.param("What is the result of 5 times 6?", None, 30.0, id="the-result-of-is-not-a-reference"),
    pytest.param("Calculate 15% of 240 then name the capital of Japan", None, 36.0, id="one-computation-in-text"),
    # dependent: the prior is the result of the step the chunk depends on
    pytest.param("multiply the result by 2", 579.0, 1158.0, id="dep-multiply-the-result-by"),
    pytest.param("add 100 to that result", 425.0, 525.0, id="dep-add-to-that-result"),
    pytest.param("divide the result by 4", 100.0, 25.0, id="dep-divide-the-result-by"),
    pytest.param("subtract 5 from it", 20.0, 15.0, id="dep-subtract-from-it"),
    pytest.param("subtract it from 100", 30.0, 70.0, id="dep-subtract-it-from"),
    pytest.param("double it", 21.0, 42.0, id="dep-double-it"),
    pytest.param("triple it", 45.0, 135.0, id="dep-triple-it"),
    pytest.param("square the result", 12.0, 144.0, id="dep-square-the-result"),
    pytest.param("take 20% of that", 50.0, 10.0, id="dep-take-percent-of-that"),
    pytest.param("what is 10% of the result", 50.0, 5.0, id="dep-percent-of-the-result"),
    pytest.param("multiply by 3", 4.0, 12.0, id="dep-implicit-multiply-by"),
    pytest.param("divide by 4", 8.0, 2.0, id="dep-implicit-divide-by"),
    pytest.param("add 8", 42.0, 50.0, id="dep-implicit-add"),
    pytest.param("subtract 2", 42.0, 40.0, id="dep-implicit-subtract"),
    pytest.param("multiply that number by 6", 11.0, 66.0, id="dep-that-number"),
    pytest.param("subtract 1 from the answer", 81.0, 80.0, id="dep-the-answer"),
    pytest.param("multiply the sum by 2", 7.0, 14.0, id="dep-the-sum"),
    pytest.param("what is the total times 3", 4.0, 12.0, id="dep-the-total-times"),
    pytest.param("the result squared", 5.0, 25.0, id="dep-squared"),
    pytest.param("take the square root", 81.0, 9.0, id="dep-take-the-square-root"),
    pytest.param("What is the square root of the result?", 81.0, 9.0, id="dep-square-root-of-the-result"),
    pytest.param("increase it by 10%", 200.0, 220.0, id="dep-increase-by-percent"),
    pytest.param("half of that", 10.0, 5.0, id="dep-half-of-that"),
    pytest.param("divide 100 by the result", 4.0, 25.0, id="dep-divide-by-the-result"),
    pytest.param("What is 123 plus 456", 7.0, 579.0, id="dep-prior-not-referenced"),
    pytest.param("add 20% of the result to it", 130.0, 156.0, id="dep-add-a-share-of-the-result"),
]

# (text, prior): no exact answer, never a guess.
UNREADABLE = [
    pytest.param("multiply the result by 2", None, id="reference-without-prior"),
    pytest.param("double it", None, id="double-it-without-prior"),
    pytest.param("add 10", None, id="implicit-operand-without-prior"),
    pytest.param("Janet has 16 eggs. She eats 3 each morning. How many are left?", None, id="word-problem"),
    pytest.param("Tom has twice as many apples as Ann, who has 4.", None, id="word-problem-twice"),
    pytest.param("A class has 30 students. 20% of them are absent. How many are present?", None,
                 id="word-problem-percent"),
    pytest.param("Tell me a joke", None, id="no-numbers"),
    pytest.param("What is 123 plus 456, then multiply the result by 2", None, id="two-computations-then"),
    pytest.param("Add 250 and 175 and then add 100 to that result", 5.0, id="two-computations-and-then"),
    pytest.param("What is 3 + 4 and 5 + 6?", None, id="two-expressions"),
    pytest.param("Multiply the result by 2 and add 3", 5.0, id="two-steps-on-prior"),
    pytest.param("What is 3 plus 4 times 2?", None, id="spelled-mixed-precedence"),
    pytest.param("What is 2 plus 3 squared?", None, id="squared-after-operator"),
    pytest.param("What is 10% of 50 plus 5?", None, id="percent-then-plus"),
    pytest.param("What is the difference between 4 and 10?", None, id="difference-smaller-first"),
    pytest.param("Add 5 and 3 to it", 10.0, id="list-that-goes-on"),
    pytest.param("multiply 2 by 3 by 4", None, id="two-bys"),
    pytest.param("Is 5 plus 3 equal to 8?", None, id="stray-number"),
    pytest.param("What is 5 km plus 300 m?", None, id="different-units"),
    pytest.param("What is 5 million plus 3 million?", None, id="scale-words"),
    pytest.param("What is 7 divided by 2 rounded down?", None, id="rounded"),
    pytest.param("What is 7 plus 8 in binary?", None, id="other-form"),
    pytest.param("What is 1,2,3?", None, id="list-or-thousands"),
    pytest.param("What is 2^65?", None, id="exponent-over-limit"),
    pytest.param("What is 10 ^ 64 ^ 2?", None, id="tower-over-limit"),
    pytest.param("What is the square root of -4?", None, id="negative-square-root"),
    pytest.param("What is (-8) ^ (1/3)?", None, id="complex-power"),
    pytest.param("divide 100 by the result", 0.0, id="division-by-zero-prior"),
    pytest.param("multiply the result by 2", math.inf, id="infinite-prior"),
    pytest.param("Add milk to the shopping list", None, id="add-without-numbers"),
    pytest.param("Book a double room for 2 nights", None, id="double-room"),
    pytest.param("the difference between cats and dogs", None, id="difference-without-numbers"),
    pytest.param("Add the results together", 5.0, id="plural-results-not-the-prior"),
    pytest.param("Multiply the first result by 2", 5.0, id="first-result-not-the-prior"),
    pytest.param("What is 2.5 * 4e3?", None, id="scientific-notation"),
    pytest.param("Zaid spends 1/4 of his salary on rent", None, id="fraction-of-something"),
    pytest.param("add it", 5.0, id="add-it-to-what"),
    pytest.param("multiply by the result", 5.0, id="multiply-what-by-the-result"),
]


@pytest.mark.parametrize(("text", "prior", "expected"), READABLE)
def test_exact_answer_reads_one_computation(text: str, prior: float | None, expected: float) -> None:
    assert exact_answer(text, prior) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("text", "prior"), UNREADABLE)
def test_exact_answer_is_none_rather_than_a_guess(text: str, prior: float | None) -> None:
    assert exact_answer(text, prior) is None


def test_the_tables_cover_dependent_and_unreadable_cases() -> None:
    dependent = [p for p in READABLE if p.values[1] is not None]

    assert len(READABLE) + len(UNREADABLE) >= 60
    assert len(dependent) >= 15
    assert len(UNREADABLE) >= 12


@pytest.mark.parametrize(
    ("text", "dependent", "expected"),
    [
        pytest.param("What is 123 plus 456", False, True, id="plain"),
        pytest.param("What is 5 / 0", False, True, id="arithmetic-even-without-a-value"),
        pytest.param("multiply the result by 2", True, True, id="dependent-reference"),
        pytest.param("multiply by 2", True, True, id="dependent-implicit"),
        pytest.param("multiply the result by 2", False, False, id="reference-needs-a-dependency"),
        pytest.param("find the best savings accounts", True, False, id="not-arithmetic"),
        pytest.param("Janet has 16 eggs. She eats 3. How many are left?", False, False, id="word-problem"),
    ],
)
def test_reads_arithmetic(text: str, dependent: bool, expected: bool) -> None:
    assert reads_arithmetic(text, dependent) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("double it", True, id="it"),
        pytest.param("add 10", True, id="implicit"),
        pytest.param("take the square root", True, id="implicit-root"),
        pytest.param("Add 2 and 3", False, id="own-numbers"),
        pytest.param("compare it with Berlin", False, id="not-arithmetic"),
    ],
)
def test_refers_to_prior(text: str, expected: bool) -> None:
    assert refers_to_prior(text) is expected


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param(["Answer: 579"], 579.0, id="one"),
        pytest.param(["123 + 456 = 579\nAnswer: 579"], 579.0, id="working"),
        pytest.param(["Answer: 3", "The total is 1,158"], 1158.0, id="last-dependency"),
        pytest.param([], None, id="none"),
        pytest.param(["Paris"], None, id="no-number"),
    ],
)
def test_prior_value_is_the_last_dependency_final_number(answers: list[str], expected: float | None) -> None:
    assert prior_value(answers) == expected


def test_exact_answer_with_prior_chains_the_issue_queries() -> None:
    first = exact_answer("What is 123 plus 456")
    second = exact_answer("multiply the result by 2", prior_value([f"Answer: {first}"]))

    assert (first, second) == (579.0, 1158.0)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("Tokyo", "The capital of Japan is Tokyo.", True),
    ("Au", "The chemical symbol for gold is Au.", True),
    ("Jane Austen", "Pride and Prejudice was written by Jane Austen.", True),
    ("Paris", "The capital of France is Lyon.", False),
    ("Leo Tolstoy", "Pride and Prejudice was written by Jane Austen.", False),
    ("The answer is", "Tokyo", False),  # nothing but filler is no answer
    ("Online high-yield savings accounts", "Credit unions and online banks", False),
])
def test_a_short_factoid_matches_a_sentence_that_contains_it(a: str, b: str, same: bool) -> None:
    from dellm.coordinator.pipeline.answers import answers_match, normalize_answer
    from dellm.coordinator.pipeline.operations import Operation

    key_a, key_b = normalize_answer(a, Operation.SEARCH_OP), normalize_answer(b, Operation.SEARCH_OP)
    assert answers_match(key_a, key_b) is same and answers_match(key_b, key_a) is same


@pytest.mark.parametrize(("text", "final", "value", "notes"), [
    pytest.param("175 diamonds + 140 rubies + 280 emeralds = 695 gems\nAnswer: 695", 695.0, 595.0,
                 ["175 + 140 + 280 is 595, not 695"], id="gsm8k-67-a-slipped-sum"),
    pytest.param("Step 1: 5 + 7 + 14 = 36 hours\nStep 2: 36 hours x 4 weeks = 144 hours\nAnswer: 144", 144.0, 104.0,
                 ["5 + 7 + 14 is 26, not 36", "26 * 4 is 104, not 144"], id="a-slip-carried-into-later-steps"),
    pytest.param("\\[ \\text{Total} = 175 + 140 + 280 = 695 \\]\nAnswer: \\(\\boxed{695}\\)", 695.0, 595.0,
                 ["175 + 140 + 280 is 595, not 695"], id="latex-chain"),
    pytest.param("\\[ \\text{James} = \\frac{2}{3} \\times 9 = 6 \\text{ hours} \\]\n9 - 6 = 3\nAnswer: 3", 3.0, 3.0,
                 [], id="latex-fraction-right"),
    pytest.param("252 eggs ÷ 12 eggs/dozen = 21 dozens per day\n21 dozens/day × 7 days/week = 147\n"
                 "147 × $2 = $294\nAnswer: $294", 294.0, 294.0, [], id="units-with-slashes-right"),
    pytest.param("(80 + 60 + 100) / 3 = 240 / 3 = 80\nAnswer: 80", 80.0, 80.0, [], id="a-chain-states-its-last-value"),
    pytest.param("35 apples / 15 per box = 2 full boxes\nAnswer: 2", 2.0, 2.0, [], id="division-in-whole-units"),
    pytest.param("10 / 3 = 3.33\nAnswer: 3.33", 3.33, 3.33, [], id="rounded"),
    pytest.param("- 18 / 3 = 6 roses\n- 6 + 3 = 9\nAnswer: 9", 9.0, 9.0, [], id="bullets-are-not-signs"),
    pytest.param("-3 + 5 = 2\nAnswer: 2", 2.0, 2.0, [], id="a-negative-first-number"),
    pytest.param("2x + 3 = 7, so x = 2\nAnswer: 2", 2.0, 2.0, [], id="algebra-is-left-alone"),
    pytest.param("if 5 + 3 >= 7 then 8 <= 9\nAnswer: 8", 8.0, 8.0, [], id="comparisons-are-not-equations"),
    pytest.param("Step 3: 2 + 2 = 5\nStep 4: 10 - 1 = 9\nAnswer: 9", 9.0, 9.0, ["2 + 2 is 4, not 5"],
                 id="a-slip-the-answer-does-not-use"),
    pytest.param("no arithmetic here. Answer: 12", 12.0, 12.0, [], id="no-equations"),
    pytest.param("4 + 4 = 9", None, None, ["4 + 4 is 8, not 9"], id="no-final-number"),
])
def test_worked_steps_arithmetic_is_re_run(text: str, final: float | None, value: float | None,
                                          notes: list[str]) -> None:
    assert rerun_worked_steps(text, final) == (value, notes)
