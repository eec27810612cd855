"""Between dispatch and assemble: the number a math answer is judged by, from the node's own program.

A MATH_OP chunk asks each node for a short Python program as well as its answer. The program runs in
the coordinator's sandbox (see ``coordinator/sandbox.py``), and what it computes is the node's
answer for the vote and the reward:

- a program that runs: its value, whatever the node wrote after it ("stated 360, its program
  computed 36": judged by the program);
- a program that is refused, fails, loops or allocates without bound: a wrong answer for that node
  (the answer fails, with the reason), and the coordinator carries on;
- no program at all (worked steps in words): the number the node stated, where its own written
  arithmetic leads. Each equation it writes ("175 diamonds + 140 rubies + 280 emeralds = 695 gems") is
  re-run in order, a corrected value carried into the later steps that use it, and a stated answer that
  came from a slipped equation is judged by the corrected one (``answers.rerun_worked_steps``). On the
  recorded GSM8K answers of problems 0..99 (730 worked answers of the 0.5B and 1.5B coders) this turned 20
  wrong answers right and no right one wrong.

A question asking for a magnitude ("How much more revenue did the mechanic earn ...?") whose arithmetic
the coordinator does not read itself judges a negative answer by its size: below zero, it is a sign slip
(the program subtracted in the wrong order). On GSM8K problems 0..99 the 1.5B coder gave 17 negative
answers to such questions; none was right as it stood, and its size was right on 4 of the 9 problems.

A word problem's answer can also be seen to be wrong without knowing the right one (``implausible``): no
number, zero or less for a quantity asked, a fraction of a thing counted whole, or a number that is not a
whole number of cents (a division that does not come out). Among the 851 answers the 1.5B coder gave in five
network runs on GSM8K problems 0..199, the 37 this calls implausible were all wrong; its greedy programs were
right on 146 of the 220 that were plausible (66%) and on none of the 18 that were not (``python
scripts/gsm8k_rescore.py bench-results/gsm8k{50,50b,50c,100,150}/results.json``).
So the network trusts a plausible program and asks more of an implausible one (pipeline/consistency.py).

Answers to other operations pass through unchanged.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
import re

from dellm.coordinator.pipeline.answers import final_number, format_number, reads_arithmetic, rerun_worked_steps
from dellm.coordinator.pipeline.operations import MAGNITUDE_QUESTION, SENTENCE_BREAK, Operation
from dellm.coordinator.sandbox import ProgramRunner, extract_program
from dellm.coordinator.types import Chunk, NodeAnswer

PROGRAM_FAILED = "its program did not compute a number"  # how a failed program's answer is marked


_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_]\w*\s*=[^=].*$")


_ARITHMETIC_LINE = re.compile(r"^[\d\s.()+\-*/%]*\d\s*(?:\*\*|[-+*/%])[\d\s.()+\-*/%]*$")


def bare_program(text: str) -> str | None:
    """Code a node wrote without a fenced block: its assignment lines (``answer = 15 / 100 * 240``),
    when they parse as Python and one of them assigns ``answer`` or ``result``; or a reply that is one
    line of arithmetic on numbers alone (``196 ** 0.5``, ``(12 + 18 + 27) / 3``), which is its answer's
    expression. A worked line ("500 - 175 = 325") is neither: its stated number is its answer."""
    stripped = text.strip()
    if "\n" not in stripped and _ARITHMETIC_LINE.match(stripped):
        with contextlib.suppress(SyntaxError):
            ast.parse(stripped, mode="eval")
            return f"answer = {stripped}"
    lines = [line.strip() for line in text.splitlines() if _ASSIGNMENT.match(line)]
    if not any(re.match(r"(answer|result)\s*=", line) for line in lines):
        return None
    program = "\n".join(lines)
    try:
        ast.parse(program)
    except SyntaxError:
        return None
    return program


_FENCED = re.compile(r"```.*?(?:```|$)", re.S)


def stated_number(text: str) -> float | None:
    """The number a node states as its answer, outside its code (fenced blocks and bare assignment lines);
    None when it states none (a bare one-line program or expression states nothing: its value is what it
    computes)."""
    prose = "\n".join(line for line in _FENCED.sub("\n", text).splitlines()
                      if not _ASSIGNMENT.match(line) and not _ARITHMETIC_LINE.match(line.strip()))
    return final_number(prose) if prose.strip() else None


async def judge_by_program(answer: NodeAnswer, chunk: Chunk, runner: ProgramRunner | None) -> NodeAnswer:
    """``answer`` with ``value`` and ``program`` set for a math chunk (see the module docstring)."""
    if chunk.operation is not Operation.MATH_OP or answer.failed:
        return answer
    stated = stated_number(answer.text)
    # Arithmetic the coordinator reads itself is checked, not repaired: a node that writes "682 + 18 = 690"
    # has answered 690 (a canary's liar must be caught). Only a word problem's answers are mended.
    word_problem = not reads_arithmetic(chunk.text, dependent=True)
    program = (extract_program(answer.text) or bare_program(answer.text)) if runner is not None else None
    if program is None or runner is None:
        rerun, slips = rerun_worked_steps(answer.text, stated) if word_problem else (stated, [])
        value, sign = _magnitude(rerun, chunk, word_problem)
        steps = f"; its written arithmetic re-run: {'; '.join(slips)}" if slips else ""
        note = (("no program" if runner is not None else "") + steps + sign).removeprefix("; ")
        return dataclasses.replace(answer, value=value, program=note)
    execution = await runner.run(program)
    if not execution.ok or execution.value is None or not math.isfinite(execution.value):
        why = f"{PROGRAM_FAILED} ({execution.error})"
        return dataclasses.replace(answer, value=None, program=why, error=why, program_failed=True)
    computed = execution.value
    if stated is not None and not math.isclose(stated, computed, rel_tol=1e-6, abs_tol=1e-9):
        note = f"stated {format_number(stated)}, its program computed {format_number(computed)}: judged by the program"
    else:
        note = f"its program computed {format_number(computed)}"
    value, sign = _magnitude(computed, chunk, word_problem)
    return dataclasses.replace(answer, value=value, program=note + sign)


# Units a count can be asked in that come in parts ("How many hours ...": 2.5 is an answer); things counted
# otherwise come whole ("How many french fries ...": 5.5 is not).
_PARTS = (r"(?:hours?|minutes?|seconds?|days?|weeks?|months?|years?|miles?|kilomet(?:er|re)s?|km|met(?:er|re)s?|feet|"
          r"foot|inch(?:es)?|yards?|pounds?|lbs?|ounces?|oz|grams?|kilograms?|kg|tons?|gallons?|lit(?:er|re)s?|quarts?|"
          r"pints?|cups?|(?:tea|table)spoons?|times|percent|dollars?|cents?|euros?|laps?|servings?|acres?)")
_COUNT_QUESTION = re.compile(
    rf"\bhow\s+many\s+(?!(?:more|fewer|less|extra|additional|total|whole|full)?\s*{_PARTS}\b)", re.I)
# Questions whose answer is a part by nature: their values may have any number of decimals.
_PART_QUESTION = re.compile(r"\b(?:fraction|probability|ratio|proportion|chance|odds|average|mean)\b", re.I)


def _question(text: str) -> str:
    """The sentence that asks: the last one with a '?', else the last sentence."""
    sentences = SENTENCE_BREAK.split(text.strip())
    return next((s for s in reversed(sentences) if "?" in s), sentences[-1])


def implausible(chunk: Chunk, value: float | None) -> str | None:
    """Why ``value`` cannot be the answer to the word problem ``chunk``, or None when it can (see the module's
    notes). Not a proof: a plausible value may be wrong, and a question of an unusual kind may have an answer
    this calls implausible, which then only costs more answers (the vote still serves it when no plausible
    answer is found)."""
    if value is None:
        return "no number"
    value = float(value)
    if value <= 0 and MAGNITUDE_QUESTION.search(chunk.text):
        return "zero or less, for a quantity asked"
    question = _question(chunk.text)
    if math.isclose(value, round(value), abs_tol=1e-6) or _PART_QUESTION.search(question):
        return None
    if _COUNT_QUESTION.search(question):
        return "a fraction of a thing counted whole"
    if not math.isclose(value * 100, round(value * 100), abs_tol=1e-6):
        return "not a whole number of cents: a division that does not come out"
    return None


def _magnitude(value: float | None, chunk: Chunk, word_problem: bool) -> tuple[float | None, str]:
    """``value``, or its size when it is below zero and the ``word_problem`` asks a magnitude (see the
    module's notes); and a note saying so."""
    if value is None or value >= 0 or not word_problem or not MAGNITUDE_QUESTION.search(chunk.text):
        return value, ""
    return -value, f"; a magnitude is asked, so judged as {format_number(-value)}"
