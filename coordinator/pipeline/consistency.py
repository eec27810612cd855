"""Self-consistency for word problems: answers by four methods, voted, stopped once the vote is clear.

A word problem is math the coordinator cannot check exactly ("Janet's ducks lay 16 eggs per day ..."), so
the only evidence is agreement. Agreement between copies of one method proves little: a program that
misreads the problem and a second sample of it misread it alike. So the plan asks methods that fail
differently, each greedy, before any sampled answer:

- ``REASONING``: worked steps in words, judged by the final 'Answer: <number>' line; the strongest models
  are best at it, so the plan's first answer is this one, from the strongest model's node (dispatch gives
  the plan's samples to its nodes strongest first);
- ``PROGRAM``: a Python program, judged by what it computes in the coordinator's sandbox
  (pipeline/execute.py);
- ``PLANNED_REASONING``: plan and solve, worked steps in words after listing the quantities the problem
  gives and what it asks (a misread quantity or question is the reasoning's commonest slip);
- ``FUNCTION_PROGRAM``: a program in the PAL style, a ``solution()`` function naming each quantity of the
  problem with a comment, whose value is stored in ``answer`` for the sandbox to read.

Plan index i asks method ``METHODS[i % 4]``; the first four answers are greedy, the rest are sampled at
``sample_temperature``, each with a seed of its own, so that two copies of a model (or one node asked twice)
give two samples, not one answer twice. Why greedy first: on GSM8K problems 0..49 a 1.5B coder's greedy
answers were each right about half the time, its sampled answers (0.6) clearly less often, and a majority
of samples rarely outvoted a wrong greedy answer (bench-results/notes/gsm8k.md), while the two greedy
methods, when they agreed, were right every time. So diversity comes from methods, not from temperature.
A node that has answered takes the plan's next sample while the vote is open.

Agreement counts only across families (``FAMILY``): words and programs fail differently, but two programs
of one model share their slips, and so do two worked solutions (on GSM8K #50 both programs forgot that eggs
sell by the dozen and outvoted the right worked answer). So the chunk settles (``consistency_settled``) once
answers of both families agree and their group is larger than any other; the first two answers are one of
each, so when they agree, it settles at once. The vote (assemble's ``_majority_of_samples``) serves the
largest group holding both families, and without one the greedy reasoning answer: the network then says
what its best single answer says. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.assemble import answer_key, group_members, votes_at_all
from dellm.coordinator.pipeline.dispatch import derived_seed
from dellm.coordinator.pipeline.prompts import (
    REASONING_SYSTEM,
    function_program_prompt,
    planned_reasoning_prompt,
    reasoning_prompt,
)
from dellm.coordinator.types import Chunk, ChunkRequest, NodeAnswer


class Method(enum.StrEnum):
    REASONING = "reasoning"
    PROGRAM = "program"
    PLANNED_REASONING = "planned_reasoning"
    FUNCTION_PROGRAM = "function_program"


METHODS = (Method.REASONING, Method.PROGRAM, Method.PLANNED_REASONING, Method.FUNCTION_PROGRAM)  # plan order
# How each method is judged, and so how it fails: by the last line of words, or by running a program. Two
# answers of one family share their slips (both programs of the Lloyd problem in GSM8K forgot that eggs sell by
# the dozen), so only agreement across families is strong evidence.
FAMILY = {Method.REASONING: "words", Method.PLANNED_REASONING: "words",
          Method.PROGRAM: "program", Method.FUNCTION_PROGRAM: "program"}


@dataclass(frozen=True)
class Sample:
    index: int  # 0-based position in the plan
    method: Method
    temperature: float


def sample_plan(samples: int, temperature: float) -> tuple[Sample, ...]:
    """``samples`` answers: each method once, greedy, in ``METHODS`` order; then the methods again in turn,
    sampled at ``temperature``."""
    return tuple(Sample(i, METHODS[i % len(METHODS)], 0.0 if i < len(METHODS) else temperature)
                 for i in range(samples))


def sample_requests(chunk: Chunk, program_request: ChunkRequest, config: DispatchConfig) -> tuple[ChunkRequest, ...]:
    """The plan's requests, in order. ``program_request`` is the chunk's program request (prompt, system
    instruction and budget, see prompts.py); the other methods ask their own way, each with its budget."""
    requests = []
    for sample in sample_plan(config.samples, config.sample_temperature):
        seed = derived_seed(program_request.query_id, chunk.chunk_id, sample.index) if sample.temperature > 0 else 0
        if sample.method is Method.REASONING:
            request = replace(program_request, prompt=reasoning_prompt(chunk.text), system=REASONING_SYSTEM,
                              max_tokens=max(config.max_tokens, config.reasoning_max_tokens))
        elif sample.method is Method.PLANNED_REASONING:
            request = replace(program_request, prompt=planned_reasoning_prompt(chunk.text), system=REASONING_SYSTEM,
                              max_tokens=max(config.max_tokens, config.planned_reasoning_max_tokens))
        elif sample.method is Method.FUNCTION_PROGRAM:
            request = replace(program_request, prompt=function_program_prompt(chunk.text),
                              max_tokens=max(config.max_tokens, config.function_program_max_tokens))
        else:
            request = program_request
        requests.append(replace(request, temperature=sample.temperature, seed=seed, sample=sample.index,
                                family=FAMILY[sample.method]))
    return tuple(requests)


def consistency_settled(chunk: Chunk, answers: Sequence[NodeAnswer], planned: int) -> bool:
    """Is the vote over a word problem's samples clear? Yes once answers of both families agree and their
    group is larger than any other (see the module docstring); ``planned`` is the plan's length."""
    voting = [a for a in answers if votes_at_all(chunk, a)]
    groups = family_groups([answer_key(a, chunk) for a in voting], [a.family for a in voting])
    spanning = [size for size, families in groups if len(families) >= 2]
    if not spanning:
        return False
    leader = max(spanning)
    return sum(size == leader for size, _ in groups) == 1 and len(voting) <= planned


def family_groups(keys: Sequence[str], families: Sequence[str]) -> list[tuple[int, frozenset[str]]]:
    """(members, families among them) of each group of matching answer keys."""
    return [(len(members), frozenset(families[i] for i in members)) for members in group_members(keys)]
