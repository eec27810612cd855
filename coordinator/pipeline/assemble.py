"""Stage 4: turn the redundant answers to one chunk into one result by weighted vote.

Answers are normalized so that equal answers group together: for math chunks (and any
answer that is essentially a number) the final number, with currency, thousands
separators and units dropped; otherwise lower-cased words, compared by word overlap.
Each group's weight is the sum of fitness x confidence of its members. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from dellm.coordinator.types import Chunk, ChunkResult, NodeAnswer, Operation, Vote

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_MARKER = re.compile(r"\b(?:final answer|answer|result|total)\b\s*(?:is|:|=)", re.I)
_WORD = re.compile(r"[a-z0-9]+")
TEXT_SIMILARITY = 0.6  # word-set Jaccard at or above which two free-text answers count as one
MIN_FITNESS_WEIGHT = 0.01  # a node at fitness 0 still casts a (tiny) vote
MAX_ANSWER_CHARS = 8000  # longer than any chunk answer asked for: malformed, not an answer


def is_degenerate(text: str) -> bool:
    """True for output that loops ("- 1000 * 0.10 = 1000 - 1000 * 0.10 = 1000 ..."): a small model's
    failure mode, malformed rather than an answer."""
    words = text.lower().split()
    if len(words) < 12:
        return False
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(words)) / len(words) < 0.3 or len(set(trigrams)) / len(trigrams) < 0.4


class AssemblyError(RuntimeError):
    """No usable answer came back for a chunk."""


def parse_number(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The number an answer gives as its result.

    After the last "Answer:"/"result is" marker: the number after its last "=" when it
    shows working ("Answer: 1000 * 0.10 = 100" -> 100), else its first number ("the answer
    is 42, not 7" -> 42). With no marker: the last number in the text.
    """
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():]
        tail = tail[tail.rfind("=") + 1:] if "=" in tail else tail
        numbers = _NUMBER.findall(tail)
        if numbers:
            return parse_number(numbers[0])
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def format_number(value: float) -> str:
    """A number as an answer states it: 100 rather than 100.0, else 12 significant digits."""
    if math.isfinite(value) and value == round(value):
        return str(round(value))
    return f"{value:.12g}"


def normalize_answer(text: str, operation: Operation) -> str:
    """A key under which equal answers compare equal ("num:100", "text:paris is the capital")."""
    stripped = text.strip()
    words = _WORD.findall(stripped.lower())
    numeric_only = bool(words) and all(w.isdigit() for w in words) and len(_NUMBER.findall(stripped)) == 1
    if operation is Operation.MATH_OP or numeric_only:
        value = final_number(stripped)
        if value is not None:
            return f"num:{format_number(value)}"
    return "text:" + " ".join(words)


def answers_match(a: str, b: str) -> bool:
    """Whether two normalized answers (see normalize_answer) say the same thing."""
    if a == b:
        return True
    if a.startswith("num:") and b.startswith("num:"):
        x, y = float(a[4:]), float(b[4:])
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
    if a.startswith("text:") and b.startswith("text:"):
        wa, wb = set(a[5:].split()), set(b[5:].split())
        return bool(wa | wb) and len(wa & wb) / len(wa | wb) >= TEXT_SIMILARITY
    return False


def reference_key(operation: Operation, expected: float | None = None, label: str | None = None) -> str | None:
    """The normalized key of a known right answer: an exact value, or a ground-truth label."""
    if expected is not None:
        return f"num:{format_number(expected)}"
    if label:
        return normalize_answer(label, operation)
    return None


def is_settled(chunk: Chunk, answers: Sequence[NodeAnswer], wanted: int, reference: str | None = None) -> bool:
    """Can the remaining redundant streams be cancelled? Yes once an answer matches the known right
    answer, or a strict majority of the ``wanted`` answers already agree."""
    keys = [normalize_answer(a.text, chunk.operation) for a in answers
            if not a.failed and a.text.strip() and not is_degenerate(a.text)]
    if reference is not None and any(answers_match(key, reference) for key in keys):
        return True
    largest = max((sum(1 for other in keys if answers_match(key, other)) for key in keys), default=0)
    return len(keys) >= 2 and largest >= wanted // 2 + 1


def assemble_chunk(
    chunk: Chunk, answers: Sequence[NodeAnswer], fitness: Mapping[str, float], reference: str | None = None
) -> ChunkResult:
    """Weighted vote over ``answers``; failed, empty and degenerate answers get no vote.

    ``reference`` is the key of a known right answer (a math chunk's exact value, or a benchmark
    label; see reference_key): a group that matches it wins whatever the weights say.
    """
    groups: list[str] = []  # representative normalized key of each group
    votes: list[Vote] = []
    for answer in answers:
        node_fitness = fitness.get(answer.node_id, 0.0)
        text = answer.text.strip()
        if answer.failed or not text or is_degenerate(text) or len(text) > MAX_ANSWER_CHARS:
            error = answer.error or ("empty answer" if not text else
                                     "too long" if len(text) > MAX_ANSWER_CHARS else "degenerate, repeating output")
            votes.append(Vote(answer.node_id, text, "", answer.confidence, node_fitness, 0.0,
                              answer.latency_ms, -1, error))
            continue
        key = normalize_answer(text, chunk.operation)
        group = next((i for i, rep in enumerate(groups) if answers_match(rep, key)), None)
        if group is None:
            groups.append(key)
            group = len(groups) - 1
        weight = max(node_fitness, MIN_FITNESS_WEIGHT) * answer.confidence
        votes.append(Vote(answer.node_id, text, key, answer.confidence, node_fitness, weight,
                          answer.latency_ms, group))

    valid = [v for v in votes if v.group >= 0]
    if not valid:
        raise AssemblyError(f"no usable answer for chunk {chunk.chunk_id}")
    weight_by_group = [sum(v.weight for v in valid if v.group == g) for g in range(len(groups))]
    # Highest weight wins; ties go to the group that answered first (stable, reproducible).
    winner_group = max(range(len(groups)), key=lambda g: (weight_by_group[g], -g))
    if reference is not None:
        winner_group = next((g for g, key in enumerate(groups) if answers_match(key, reference)), winner_group)
    winner = max((v for v in valid if v.group == winner_group), key=lambda v: v.weight)
    total = sum(weight_by_group)
    return ChunkResult(
        chunk=chunk,
        answer=winner.answer,
        winner_node_id=winner.node_id,
        votes=tuple(votes),
        unanimous=len(groups) == 1 and len(valid) >= 2,
        agreement=weight_by_group[winner_group] / total if total > 0 else 1.0 / len(groups),
        groups=len(groups),
    )
