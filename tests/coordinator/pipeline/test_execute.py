"""Between dispatch and assemble: a math answer judged by its own program (ScriptedRunner test double)."""

from __future__ import annotations

import pytest

from dellm.coordinator.pipeline.answer import escalation_exclude
from dellm.coordinator.pipeline.execute import bare_program, implausible, judge_by_program, stated_number
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.sandbox import Execution, ScriptedRunner
from dellm.coordinator.types import Chunk, NodeAnswer, NodeRecord
from dellm.protos.wire import NodeDescription

MATH = Chunk("c1", Operation.MATH_OP, "What is 15% of 240?", 8, 0.5)
FACT = Chunk("c2", Operation.SEARCH_OP, "Name the capital of Japan", 6, 0.4)
PROGRAM = "answer = 15 / 100 * 240"


def answer(text: str, error: str | None = None) -> NodeAnswer:
    return NodeAnswer("c1", "n1", text, 0.9, 100.0, error=error)


def with_program(stated: str, body: str = PROGRAM) -> str:
    return f"```python\n{body}\n```\nAnswer: {stated}"


@pytest.mark.parametrize(("text", "value"), [
    ("Answer: 36", 36.0),
    (with_program("36"), 36.0),
    ("```python\nx = 15 * 240 / 100\nprint(x)\n```\nThe result is 36.0", 36.0),
    ("```python\nanswer = 5\n```", None),  # nothing stated outside the code: its value is what it computes
    ("answer = 1000 * 0.10", None),  # a bare one-line program states nothing either
    ("196 ** 0.5", None),  # nor a bare expression (not 0.5)
    ("no number here", None),
])
def test_stated_number_reads_the_prose_after_the_program(text: str, value: float | None) -> None:
    assert stated_number(text) == value


async def test_the_program_decides_when_the_words_disagree() -> None:
    runner = ScriptedRunner({PROGRAM: Execution.success(36.0)})
    judged = await judge_by_program(answer(with_program("360")), MATH, runner)
    assert judged.value == 36.0 and not judged.failed
    assert judged.program == "stated 360, its program computed 36: judged by the program"
    assert runner.programs == [PROGRAM]


async def test_agreeing_words_and_program() -> None:
    judged = await judge_by_program(answer(with_program("36")), MATH, ScriptedRunner({PROGRAM: Execution.success(36)}))
    assert judged.value == 36.0 and judged.program == "its program computed 36"


@pytest.mark.parametrize("execution", [
    Execution.failure("timeout", "the program ran past its 2 s of CPU"),
    Execution.failure("refused", "line 1: import of 'os' is not allowed"),
    Execution.failure("memory", "over 256 MiB"),
    Execution.failure("no_value", "the program computed no number"),
    Execution(ok=True, value=float("inf")),
])
async def test_a_failed_program_is_a_failed_answer(execution: Execution) -> None:
    judged = await judge_by_program(answer(with_program("36")), MATH, ScriptedRunner({PROGRAM: execution}))
    assert judged.failed and judged.program_failed and judged.value is None
    assert judged.error is not None and judged.error.startswith("its program did not compute a number")


async def test_without_a_program_the_stated_number_counts() -> None:
    runner = ScriptedRunner({})
    judged = await judge_by_program(answer("It is 36. Answer: 36"), MATH, runner)
    assert judged.value == 36.0 and judged.program == "no program" and runner.programs == []


async def test_other_operations_and_failed_answers_pass_through() -> None:
    runner = ScriptedRunner({})
    fact = NodeAnswer("c2", "n1", "Tokyo", 0.9, 10.0)
    assert await judge_by_program(fact, FACT, runner) == fact
    broken = answer("", error="UNAVAILABLE: gone")
    assert await judge_by_program(broken, MATH, runner) == broken


async def test_programs_off_judges_the_stated_number_only() -> None:
    judged = await judge_by_program(answer(with_program("360")), MATH, None)
    assert judged.value == 360.0 and judged.program == ""


def node(node_id: str, model: str) -> NodeRecord:
    return NodeRecord(NodeDescription(node_id, "127.0.0.1:1", model=model))


@pytest.mark.parametrize(("live", "tried", "excluded"), [
    # other models are live: copies of the model that was wrong are skipped
    ([("a", "small"), ("b", "small"), ("c", "large"), ("d", "small")], {"a", "b"}, {"a", "b", "d"}),
    # only copies of the same model are left: they are asked
    ([("a", "small"), ("b", "small"), ("d", "small")], {"a", "b"}, {"a", "b"}),
    # several models were tried: their copies are skipped while an untried model is live
    ([("a", "small"), ("b", "large"), ("c", "tiny"), ("d", "large")], {"a", "b"}, {"a", "b", "d"}),
])
def test_escalation_prefers_another_model(live: list[tuple[str, str]], tried: set[str], excluded: set[str]) -> None:
    table = NodeTable(node(i, m) for i, m in live)
    assert escalation_exclude(table, tried) == excluded


@pytest.mark.parametrize(("text", "program"), [
    ("answer = 15 / 100 * 240", "answer = 15 / 100 * 240"),
    ("Sure.\nx = 579\nanswer = x * 2\nThat is it.", "x = 579\nanswer = x * 2"),
    ("result = 7 * 8", "result = 7 * 8"),
    ("x = 5", None),  # no answer or result assigned
    ("answer == 5", None),  # a comparison, not an assignment
    ("answer = (15 +", None),  # does not parse
    ("The answer is 36.", None),
    # a reply that is one line of arithmetic is its answer's expression
    ("196 ** 0.5", "answer = 196 ** 0.5"),
    (" (12 + 18 + 27) / 3\n", "answer = (12 + 18 + 27) / 3"),
    ("-5 + 3", "answer = -5 + 3"),
    ("500 - 175 = 325", None),  # worked arithmetic: its stated number is the answer
    ("14", None),  # a number, stated
    ("3 +", None),  # does not parse
    ("12 * 7\nso 84", None),  # more than the one line
])
def test_bare_program_reads_unfenced_code(text: str, program: str | None) -> None:
    assert bare_program(text) == program


async def test_an_unfenced_one_line_program_is_run() -> None:
    runner = ScriptedRunner({PROGRAM: Execution.success(36.0)})
    judged = await judge_by_program(answer(PROGRAM), MATH, runner)
    assert judged.value == 36.0 and runner.programs == [PROGRAM]


MECHANIC = Chunk("c1", Operation.MATH_OP, "A mechanic charges $60 a tire on Monday and $40 on Tuesday, and fixes "
                 "2 tires each day. How much more revenue did the mechanic earn on the day with higher revenue?",
                 30, 0.7)
SUBTRACTION = "monday = 60 * 2\ntuesday = 40 * 2\nanswer = tuesday - monday"


@pytest.mark.parametrize(("chunk", "text", "execution", "value", "note"), [
    pytest.param(MECHANIC, with_program("-40", SUBTRACTION), Execution.success(-40.0), 40.0,
                 "its program computed -40; a magnitude is asked, so judged as 40", id="program-sign-slip"),
    pytest.param(MECHANIC, "Step 1: ...\nAnswer: -40", None, 40.0,
                 "no program; a magnitude is asked, so judged as 40", id="worked-steps-sign-slip"),
    pytest.param(MECHANIC, with_program("40", SUBTRACTION), Execution.success(40.0), 40.0,
                 "its program computed 40", id="positive-untouched"),
    pytest.param(Chunk("c1", Operation.MATH_OP, "The low was -3 degrees and the high 7 degrees lower. What was the "
                       "high?", 20, 0.6), with_program("-10", SUBTRACTION), Execution.success(-10.0), -10.0,
                 "its program computed -10", id="not-a-magnitude-question"),
    pytest.param(Chunk("c1", Operation.MATH_OP, "How much is 5 minus 9?", 8, 0.5),
                 with_program("-4", "answer = 5 - 9"), Execution.success(-4.0), -4.0, "its program computed -4",
                 id="arithmetic-checked-exactly"),
])
async def test_a_negative_answer_to_a_magnitude_question_is_judged_by_its_size(
        chunk: Chunk, text: str, execution: Execution | None, value: float, note: str) -> None:
    """GSM8K #53: both programs of the 1.5B subtracted in the wrong order and outvoted the right 40."""
    programs = {} if execution is None else {text.split("```python\n")[1].split("\n```")[0]: execution}
    judged = await judge_by_program(answer(text), chunk, ScriptedRunner(programs))
    assert (judged.value, judged.program) == (value, note)


GEMS = Chunk("c1", Operation.MATH_OP, "There were 175 diamonds, 35 fewer rubies than diamonds, and twice the number "
             "of emeralds than the rubies. How many of the gems were there in the chest?", 30, 0.7)


async def test_worked_steps_are_judged_where_their_own_arithmetic_leads() -> None:
    """GSM8K #67: the 1.5B's worked steps reasoned right and added wrong, twice."""
    worked = ("Step 1: 175 diamonds - 35 = 140 rubies\nStep 2: 140 rubies * 2 = 280 emeralds\n"
              "Step 3: 175 diamonds + 140 rubies + 280 emeralds = 695 gems\nAnswer: 695")
    judged = await judge_by_program(answer(worked), GEMS, ScriptedRunner({}))
    assert judged.value == 595.0 and not judged.failed
    assert judged.program == "no program; its written arithmetic re-run: 175 + 140 + 280 is 595, not 695"
    right = await judge_by_program(answer(worked.replace("695", "595")), GEMS, ScriptedRunner({}))
    assert (right.value, right.program) == (595.0, "no program")


async def test_arithmetic_the_coordinator_checks_is_not_repaired() -> None:
    """A node that writes '682 + 18 = 690' to 'What is 682 + 18?' answered 690: the check must catch it
    (the canaries' liar), so only a word problem's worked steps are re-run."""
    judged = await judge_by_program(answer("682 + 18 = 690. Answer: 690"),
                                    Chunk("c1", Operation.MATH_OP, "What is 682 + 18?", 6, 0.5), ScriptedRunner({}))
    assert (judged.value, judged.program) == (690.0, "no program")
    dependent = Chunk("c2", Operation.MATH_OP, "then multiply the result by 2", 6, 0.5, depends_on=("c1",))
    judged = await judge_by_program(answer("579 * 2 = 1148. Answer: 1148"), dependent, ScriptedRunner({}))
    assert judged.value == 1148.0


FRIES = "Dave bought a pack of fries and ate 14. Ants took one, leaving five. How many french fries were in the pack?"


@pytest.mark.parametrize(("question", "value", "why"), [
    (FRIES, 20, None),
    (FRIES, 5.5, "a fraction of a thing counted whole"),
    (FRIES, 20.0000000001, None),  # a float's rounding, not a fraction
    (FRIES, 0, "zero or less, for a quantity asked"),
    (FRIES, -20, "zero or less, for a quantity asked"),
    (FRIES, None, "no number"),
    ("How many more apples does Ann have than Bob?", 2.5, "a fraction of a thing counted whole"),
    # counts in units that come in parts may be fractions, to the cent
    ("Ten ducks eat 3.5 pounds of insects a week. How many pounds do they need per day?", 5, None),
    ("A trip of 15 miles at 6 miles per hour. How many hours does it take?", 2.5, None),
    ("A trip of 15 miles at 6 miles per hour. How many more hours than a 12 mile trip?", 0.5, None),
    ("Ten ducks eat 3.5 pounds of insects a week. How many pounds do they need per day?", 0.7142857,
     "not a whole number of cents: a division that does not come out"),
    ("How many dollars did she make from 9 tires at $0.25 each?", 2.25, None),
    ("Three pens cost $3.50. How much does one pen cost?", 1.1666667,
     "not a whole number of cents: a division that does not come out"),
    ("A shirt costs $12.50. How much change from $20?", 7.5, None),
    # a question whose answer is a part by nature: any value
    ("Of 3 marbles, 1 is red. What fraction of the marbles is red?", 0.3333333, None),
    ("Tom scored 7, 8 and 8. What is his average score?", 7.6666667, None),
    # only the sentence that asks decides: a count mentioned before it does not
    ("He sold 3 cakes, on average, to many customers. How much did he earn per cake at $7 for 3?", 2.3333333,
     "not a whole number of cents: a division that does not come out"),
    # the size of what is asked, not its sign, when the question asks no quantity
    ("What is the temperature change from 5 to -3 degrees?", -8, None),
])
def test_an_answer_that_cannot_be_right_is_implausible(question: str, value: float | None, why: str | None) -> None:
    assert implausible(Chunk("c1", Operation.MATH_OP, question, 10, 0.9), value) == why
