"""Stage 4: turn the redundant answers to one chunk into one result by weighted vote.

Answers are normalized so that equal answers group together: for math chunks (and any
answer that is essentially a number) the final number, with currency, thousands
separators and units dropped; otherwise lower-cased words, compared by word overlap.
Each group's weight is the sum of fitness x confidence of its members, each in [0, 1]. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from dellm.coordinator.pipeline.answers import (
    answers_match,
    echoes_prompt,
    format_number,
    is_degenerate,
    normalize_answer,
)
from dellm.coordinator.pipeline.execute import implausible, stated_number
from dellm.coordinator.pipeline.operations import OPERATIONS, Operation
from dellm.coordinator.types import Chunk, ChunkResult, NodeAnswer, Vote

MIN_FITNESS_WEIGHT = 0.01  # a node at fitness 0 still casts a (tiny) vote
MAX_ANSWER_CHARS = 8000  # longer than any chunk answer asked for: malformed, not an answer


class AssemblyError(RuntimeError):
    """No usable answer came back for a chunk."""


def vote_weight(fitness: float, confidence: float) -> float:
    """fitness x confidence, each taken within [0, 1] (fitness at least MIN_FITNESS_WEIGHT, and anything
    not a finite number as 0): however an answer's confidence was come by, no one vote outweighs what
    its node's fitness allows."""
    def unit(x: float) -> float:
        return min(1.0, max(0.0, x)) if math.isfinite(x) else 0.0

    return max(unit(fitness), MIN_FITNESS_WEIGHT) * unit(confidence)


def answer_key(answer: NodeAnswer, chunk: Chunk) -> str:
    """The normalized key an answer to ``chunk`` votes under: a math answer's judged number (its program's
    value, see pipeline/execute.py) when it has one, else its text normalized (the chunk's words it repeats
    left out)."""
    if chunk.operation is Operation.MATH_OP and answer.value is not None:
        return f"num:{format_number(answer.value)}"
    return normalize_answer(answer.text, chunk.operation, chunk.text)


def votes_at_all(chunk: Chunk, answer: NodeAnswer) -> bool:
    """Whether an answer can count in a vote (``unusable`` says why not)."""
    return unusable(chunk, answer) is None


def unusable(chunk: Chunk, answer: NodeAnswer) -> str | None:
    """Why ``answer`` gets no vote (failed, empty, too long, looping, the question repeated), or None."""
    text = answer.text.strip()
    if answer.failed:
        return answer.error or "failed"
    if not text:
        return "empty answer"
    if len(text) > MAX_ANSWER_CHARS:
        return "too long"
    if _echoes(chunk, text):
        return "it only repeats the question"
    if is_degenerate(text):
        return "degenerate, repeating output"
    return None


def is_settled(chunk: Chunk, answers: Sequence[NodeAnswer], wanted: int, reference: str | None = None) -> bool:
    """Can the remaining redundant streams be cancelled? Yes once an answer matches the known right
    answer, or a strict majority of the ``wanted`` answers already agree."""
    keys = [answer_key(a, chunk) for a in answers if votes_at_all(chunk, a)]
    if reference is not None and any(answers_match(key, reference) for key in keys):
        return True
    return len(keys) >= 2 and max(group_sizes(keys), default=0) >= wanted // 2 + 1


def group_sizes(keys: Sequence[str]) -> list[int]:
    """How many of ``keys`` fall in each group of matching answers, largest first."""
    return sorted((len(members) for members in group_members(keys)), reverse=True)


def group_members(keys: Sequence[str]) -> list[list[int]]:
    """The indices of ``keys`` in each group of matching answers, groups in order of their first member."""
    groups: list[tuple[str, list[int]]] = []  # (representative key, member indices)
    for index, key in enumerate(keys):
        at = next((i for i, (rep, _) in enumerate(groups) if answers_match(rep, key)), None)
        if at is None:
            groups.append((key, [index]))
        else:
            groups[at][1].append(index)
    return [members for _, members in groups]


def assemble_chunk(
    chunk: Chunk, answers: Sequence[NodeAnswer], fitness: Mapping[str, float], reference: str | None = None,
    expected: float | None = None, strongest: Collection[str] = frozenset(),
) -> ChunkResult:
    """Weighted vote over ``answers``; failed, empty and degenerate answers get no vote.

    ``strongest`` are the answering nodes of the strongest model among them (route.strongest_model: by its
    record at the operation once known, else by size). When no two answers agree, agreement says nothing,
    and fitness x confidence between models of different sizes is mostly noise: the strongest model's answer
    is served (the heaviest of its answers, if it gave several).

    ``reference`` is the key of a known right answer (a math chunk's exact value, or a benchmark
    label; see reference_key): a group that matches it wins whatever the weights say.
    ``expected`` is the exact value the coordinator computed itself: when no answer matches it, the
    result states that value, says so, and is marked ``checked_by="coordinator"``; a value proven wrong
    is never served. (A benchmark label is never served: it only judges.)
    """
    groups: list[str] = []  # representative normalized key of each group
    votes: list[Vote] = []
    samples: list[tuple[int, float, str]] = []  # each valid vote's plan index (-1: none), temperature, family
    for answer in answers:
        node_fitness = fitness.get(answer.node_id, 0.0)
        text = answer.text.strip()
        error = unusable(chunk, answer)
        if error is not None:
            votes.append(Vote(answer.node_id, text, "", answer.confidence, node_fitness, 0.0,
                              answer.latency_ms, -1, error, program=answer.program))
            continue
        key = answer_key(answer, chunk)
        group = next((i for i, rep in enumerate(groups) if answers_match(rep, key)), None)
        if group is None:
            groups.append(key)
            group = len(groups) - 1
        weight = vote_weight(node_fitness, answer.confidence)
        votes.append(Vote(answer.node_id, text, key, answer.confidence, node_fitness, weight,
                          answer.latency_ms, group, program=answer.program))
        samples.append((answer.sample, answer.temperature, answer.family))

    valid = [v for v in votes if v.group >= 0]
    # Answers that said something checkable: valid ones, and programs that ran wrong (a wrong answer each).
    judged = bool(valid) or any(a.program_failed for a in answers)
    if not judged:  # every stream failed: the network could not answer, whatever the coordinator knows
        raise AssemblyError(f"no usable answer for chunk {chunk.chunk_id}")
    matched = expected is not None and any(answers_match(key, f"num:{format_number(expected)}") for key in groups)
    if expected is not None and not matched:
        return _served_by_coordinator(chunk, expected, votes, len(groups))
    weight_by_group = [sum(v.weight for v in valid if v.group == g) for g in range(len(groups))]
    if any(s >= 0 for s, _, _ in samples):
        plausible = [implausible(chunk, _group_value(key)) is None for key in groups]
        winner_group = _majority_of_samples(valid, samples, weight_by_group, plausible)
    else:  # highest weight wins; ties go to the group that answered first (stable, reproducible)
        candidates = list(range(len(groups)))
        if len(valid) >= 2 and len(groups) == len(valid):  # a split: every answer alone in its group
            candidates = [g for g in candidates if any(v.node_id in strongest for v in valid if v.group == g)
                          ] or candidates
        winner_group = max(candidates, key=lambda g: (weight_by_group[g], -g))
    if reference is not None:
        winner_group = next((g for g, key in enumerate(groups) if answers_match(key, reference)), winner_group)
    winner = max((v for v in valid if v.group == winner_group), key=lambda v: v.weight)
    total = sum(weight_by_group)
    value = _group_value(groups[winner_group]) if chunk.operation is Operation.MATH_OP else None
    return ChunkResult(
        chunk=chunk,
        answer=_stated_consistently(winner.answer, value),
        winner_node_id=winner.node_id,
        votes=tuple(votes),
        unanimous=len(groups) == 1 and len(valid) >= 2,
        agreement=weight_by_group[winner_group] / total if total > 0 else 1.0 / len(groups),
        groups=len(groups),
        value=value,
        expected=expected,
        checked_by="exact_check" if matched else "",
        winner_group=winner_group,
    )


def _majority_of_samples(valid: Sequence[Vote], samples: Sequence[tuple[int, float, str]],
                         weight_by_group: Sequence[float], plausible: Sequence[bool]) -> int:
    """Self-consistency's winner (pipeline/consistency.py). A plausible answer (execute.implausible) beats any
    implausible one. Among them, only answers of both families (worked steps in words and programs) agreeing
    are evidence of more than one method's slip: the largest such group wins. Without one, the largest group,
    then one holding a greedy answer (temperature 0), the one holding the plan's earliest answer (its first is
    the greedy program, what the strongest model's node computes when asked alone), the heaviest, the first."""
    def rank(group: int) -> tuple[bool, bool, int, int, bool, int, float, int]:
        members = [s for v, s in zip(valid, samples, strict=True) if v.group == group]
        spans = len({family for _, _, family in members if family}) >= 2
        greedy = any(i >= 0 and t <= 0 for i, t, _ in members)
        earliest = min((i for i, _, _ in members if i >= 0), default=len(valid) + 1)
        size = len(members)
        return plausible[group], spans, size if spans else 0, size, greedy, -earliest, weight_by_group[group], -group

    return max(range(len(weight_by_group)), key=rank)


def _echoes(chunk: Chunk, text: str) -> bool:
    """A free-text answer that only repeats what its node was asked: the chunk's text and its operation's
    instruction (prompts.py). Math is judged by its number, not its words."""
    return chunk.operation is not Operation.MATH_OP and echoes_prompt(
        text, chunk.text, OPERATIONS[chunk.operation].instruction)


def _group_value(key: str) -> float | None:
    return float(key[4:]) if key.startswith("num:") else None


def _stated_consistently(text: str, value: float | None) -> str:
    """The winner's words when they state the group's number; else the number itself (a node whose
    program computed the right value may have written a wrong one after it)."""
    if value is None or stated_number(text) == value:
        return text
    return f"Answer: {format_number(value)}"


def _served_by_coordinator(chunk: Chunk, expected: float, votes: list[Vote], groups: int) -> ChunkResult:
    """No node's answer matched the exact value: the result is that value, and says whose it is."""
    stated = format_number(expected)
    said = sorted({v.normalized.removeprefix("num:") for v in votes if v.group >= 0})
    nodes_said = f"the nodes said {', '.join(said)}" if said else "no node gave a usable answer"
    return ChunkResult(
        chunk=chunk,
        answer=f"Answer: {stated} (computed by the coordinator: {nodes_said})",
        winner_node_id="",
        votes=tuple(votes),
        unanimous=False,
        agreement=0.0,
        groups=groups,
        value=expected,
        expected=expected,
        checked_by="coordinator",
    )
