"""Self-consistency for word problems: a program first, and more answers by other methods only when it is in doubt.

A word problem is math the coordinator cannot check exactly ("Janet's ducks lay 16 eggs per day ..."), so
the evidence is what the answers compute and whether they agree. The plan's methods fail differently:

- ``PROGRAM``: a Python program, judged by what it computes in the coordinator's sandbox
  (pipeline/execute.py); the Qwen coders are code models, and this is their best single method (GSM8K
  problems 150..199, the 1.5B alone: 29/50 with it, 26/50 with worked steps, in 58% of the time);
- ``REASONING``: worked steps in words, judged by the final 'Answer: <number>' line, its written arithmetic
  re-run;
- ``FUNCTION_PROGRAM``: a program in the PAL style, a ``solution()`` function naming each quantity of the
  problem with a comment, whose value is stored in ``answer`` for the sandbox to read;
- ``PLANNED_REASONING``: plan and solve, worked steps in words after listing the quantities the problem
  gives and what it asks (a misread quantity or question is the reasoning's commonest slip).

Plan index i asks method ``METHODS[i % 4]``; the first four answers are greedy, the rest are sampled at
``sample_temperature``, each with a seed of its own, so that two copies of a model (or one node asked twice)
give two samples, not one answer twice.

**The first answer alone, when it is plausible.** The plan's first answer, the greedy program from the
strongest model's node, is asked alone (pipeline/answer.py), and it settles the chunk unless it is
implausible (``execute.implausible``: no number, zero for a quantity asked, a fraction of a thing counted
whole, not a whole number of cents). Why: on the recorded answers of GSM8K problems 50..199 (three runs that
asked every method), trusting a plausible program and voting only when it was not would have served 94
right answers, the five-answer vote served 93, and the greedy program alone was right on 92
(``scripts/gsm8k_rescore.py``). The vote's extra answers cost about three times the time of the program
alone, for no more right answers: where more answers pay is where the first one can be seen to be wrong.

**Then the rest of the plan, spread over the nodes.** An implausible first answer is a lost vote, and the
rest of the plan goes out at once to every node (a node that has answered takes the next sample while the
vote is open). Agreement counts only across families (``FAMILY``) and among plausible answers: words and
programs fail differently, but two programs of one model share their slips, and so do two worked solutions
(on GSM8K #50 both programs forgot that eggs sell by the dozen and outvoted the right worked answer). So the
chunk settles (``consistency_settled``) once plausible answers of both families agree and their group is
larger than any other. The vote (assemble's ``_majority_of_samples``) serves the largest plausible group
holding both families; without one, the largest plausible group, a greedy one, the plan's earliest. Pure: no
I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.assemble import answer_key, group_members, votes_at_all
from dellm.coordinator.pipeline.dispatch import derived_seed
from dellm.coordinator.pipeline.execute import implausible
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


METHODS = (Method.PROGRAM, Method.REASONING, Method.FUNCTION_PROGRAM, Method.PLANNED_REASONING)  # plan order
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


def _plausible_vote(chunk: Chunk, answer: NodeAnswer) -> bool:
    return votes_at_all(chunk, answer) and implausible(chunk, answer.value) is None


def first_answer_settles(chunk: Chunk, answers: Sequence[NodeAnswer]) -> bool:
    """Does the plan's first answer settle the chunk alone? Yes when it is a plausible number (see the module
    docstring); a failed or implausible one asks for the rest of the plan."""
    return any(a.sample == 0 and _plausible_vote(chunk, a) for a in answers)


def consistency_settled(chunk: Chunk, answers: Sequence[NodeAnswer], planned: int) -> bool:
    """Is the vote over a word problem's answers clear? Yes once plausible answers of both families agree and
    their group is larger than any other plausible one (see the module docstring); ``planned`` is the plan's
    length."""
    voting = [a for a in answers if _plausible_vote(chunk, a)]
    groups = family_groups([answer_key(a, chunk) for a in voting], [a.family for a in voting])
    spanning = [size for size, families in groups if len(families) >= 2]
    if not spanning:
        return False
    leader = max(spanning)
    return sum(size == leader for size, _ in groups) == 1 and len(voting) <= planned


def family_groups(keys: Sequence[str], families: Sequence[str]) -> list[tuple[int, frozenset[str]]]:
    """(members, families among them) of each group of matching answer keys."""
    return [(len(members), frozenset(families[i] for i in members)) for members in group_members(keys)]
