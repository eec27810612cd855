"""Per-operation token budgets (prompts.max_tokens_for): a chunk gets what its kind of answer needs."""

from __future__ import annotations

import pytest

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import build_chunk_prompt, max_tokens_for, system_prompt_for
from dellm.coordinator.types import Chunk, ChunkResult

CONFIG = DispatchConfig(max_tokens=96, program_max_tokens=192, expression_max_tokens=48)


def chunk(operation: Operation) -> Chunk:
    return Chunk("c1", operation, "text", 1, 0.5)


@pytest.mark.parametrize(("operation", "checkable", "programs", "budget"), [
    (Operation.MATH_OP, True, True, 48),  # one line: answer = <expression>
    (Operation.MATH_OP, False, True, 192),  # a word problem's program
    (Operation.MATH_OP, True, False, 96),  # without programs: the plain budget
    (Operation.SEARCH_OP, False, True, 64),  # at most three short items
    (Operation.GENERAL_OP, False, True, 64),
    (Operation.COMPARE_OP, False, True, 96),  # two or three sentences: the plain budget
    (Operation.GENERATE_OP, False, True, 96),
])
def test_each_kind_of_chunk_gets_its_budget(operation: Operation, checkable: bool, programs: bool,
                                            budget: int) -> None:
    assert max_tokens_for(chunk(operation), CONFIG, programs=programs, checkable=checkable) == budget


def test_an_operation_s_cap_never_raises_a_smaller_configured_budget() -> None:
    assert max_tokens_for(chunk(Operation.SEARCH_OP), DispatchConfig(max_tokens=32)) == 32


def _result(text: str, value: float) -> ChunkResult:
    return ChunkResult(chunk=Chunk("c1", Operation.MATH_OP, text, 4, 0.4), answer=f"Answer: {value:g}",
                       winner_node_id="n1", votes=(), unanimous=True, agreement=1.0, groups=1, value=value)


@pytest.mark.parametrize(("text", "prior", "prompt"), [
    ("What is 123 plus 456", None, "What is 123 plus 456"),  # the task alone: the instruction is the system's
    ("subtract that from 1200", 180.0, "subtract 180 from 1200"),  # the earlier result written in
    ("multiply the result by 2", 579.0, "multiply 579 by 2"),
    ("add 20% of the result to it", 130.0, "add 20% of 130 to 130"),
    ("double it", 12.5, "double 12.5"),
    ("divide by 4", 180.0, "Starting from 180: divide by 4"),  # nothing points back: the value comes first
])
def test_checked_arithmetic_is_asked_as_the_computation_alone(text: str, prior: float | None, prompt: str) -> None:
    step = Chunk("c2", Operation.MATH_OP, text, 4, 0.4, depends_on=("c1",) if prior is not None else ())
    dependencies = [_result("an earlier step", prior)] if prior is not None else []
    assert build_chunk_prompt(step, dependencies) == prompt
    assert system_prompt_for(step, CONFIG, checkable=True) == CONFIG.expression_system_prompt
    assert "answer = <expression>" in CONFIG.expression_system_prompt


def test_other_math_keeps_its_instruction_and_the_earlier_results() -> None:
    step = Chunk("c2", Operation.MATH_OP, "explain how the result splits between 3 people", 8, 0.5, depends_on=("c1",))
    prompt = build_chunk_prompt(step, [_result("Add 10 and 20", 30.0)])
    assert prompt.startswith("Results of earlier steps:\n- Add 10 and 20: 30") and "variable named answer" in prompt
    assert system_prompt_for(step, CONFIG) == CONFIG.program_system_prompt
