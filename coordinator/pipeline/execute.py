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

Answers to other operations pass through unchanged.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import math
import re

from dellm.coordinator.pipeline.answers import final_number, format_number, reads_arithmetic, rerun_worked_steps
from dellm.coordinator.pipeline.operations import MAGNITUDE_QUESTION, Operation
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


def _magnitude(value: float | None, chunk: Chunk, word_problem: bool) -> tuple[float | None, str]:
    """``value``, or its size when it is below zero and the ``word_problem`` asks a magnitude (see the
    module's notes); and a note saying so."""
    if value is None or value >= 0 or not word_problem or not MAGNITUDE_QUESTION.search(chunk.text):
        return value, ""
    return -value, f"; a magnitude is asked, so judged as {format_number(-value)}"
