"""Per-operation token budgets (prompts.max_tokens_for): a chunk gets what its kind of answer needs."""

from __future__ import annotations

import pytest

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import max_tokens_for
from dellm.coordinator.types import Chunk

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
