"""Scoring of ``dellm bench gsm8k`` (pure): whether an answer is right, what kind an error is, percentiles,
and the summary of one run's records.

``percentile`` is the one percentile of the project: every benchmark script imports it from here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dellm.coordinator.stats import wilson_interval

TOLERANCE = 1e-6
PHASES = ("single", "network", "train", "learned")  # what a record belongs to; (c) asks "train" then "learned"
# The single-node baseline and the self-consistency network: "alone_<prompt>" and "samples_<n>" phases.
ALONE_PREFIX = "alone_"
SAMPLES_PREFIX = "samples_"


@dataclass
class QuestionRecord:
    phase: str
    index: int
    question: str
    label: str
    answer: str = ""
    predicted: float | None = None
    correct: bool = False
    error: str = ""
    error_kind: str = ""  # no_usable_answer | unavailable | deadline | other (see error_kind)
    latency_s: float = 0.0  # client wall clock, request sent to final event
    coordinator_ms: float = 0.0  # the coordinator's own total
    query_id: str = ""
    labelled: bool = False  # the label was sent as reference_answer
    # One entry per chunk: its nodes, consensus, and every node's answer with its own verdict.
    chunks: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[dict[str, Any]] = field(default_factory=list)


def is_correct(predicted: float | None, label: float) -> bool:
    return predicted is not None and math.isclose(predicted, label, rel_tol=TOLERANCE, abs_tol=TOLERANCE)


def error_kind(message: str) -> str:
    """What kind of failure an error message reports: the network answered nothing usable (every
    answer failed, was empty or looped), no node or coordinator was reachable, the deadline passed."""
    if not message:
        return ""
    if "could not be answered" in message:
        return "no_usable_answer"
    if message.startswith("DEADLINE_EXCEEDED"):
        return "deadline"
    if message.startswith(("UNAVAILABLE", "RESOURCE_EXHAUSTED")):
        return "unavailable"
    return "other"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (q from 0 to 100) of ``values``, linear between closest ranks; None when empty.

    This is numpy's default ("linear", Hyndman and Fan's type 7): the 50th percentile is
    ``statistics.median``, so a p50 and a p99 reported side by side come from one definition.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _valid_votes(chunk: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [v for v in chunk.get("votes", []) if not v.get("failed") and v.get("normalized")]


def summarize(records: Sequence[QuestionRecord]) -> dict[str, Any]:
    """Accuracy, consensus and latency of one run's records."""
    questions = len(records)
    errors = sum(1 for r in records if r.error)
    correct = sum(1 for r in records if r.correct)
    compared = unanimous = 0
    disagreed = vote_right_on_disagreement = any_right = 0
    per_node: dict[str, dict[str, int]] = {}
    for record in records:
        record_any_right = False
        for chunk in record.chunks:
            valid = _valid_votes(chunk)
            if len(valid) >= 2:
                compared += 1
                unanimous += bool(chunk.get("unanimous"))
            for vote in chunk.get("votes", []):
                stats = per_node.setdefault(vote.get("node") or vote.get("node_id", "?"),
                                            {"answers": 0, "correct": 0, "failed": 0})
                stats["answers"] += 1
                stats["failed"] += bool(vote.get("failed"))
                stats["correct"] += bool(vote.get("correct"))
                record_any_right |= bool(vote.get("correct"))
        any_right += record_any_right
        final_chunk = record.chunks[-1] if record.chunks else None
        if final_chunk is not None and len({v.get("normalized") for v in _valid_votes(final_chunk)}) >= 2:
            disagreed += 1
            vote_right_on_disagreement += record.correct
    latencies = [r.latency_s for r in records if not r.error]
    for stats in per_node.values():
        stats["accuracy"] = stats["correct"] / stats["answers"] if stats["answers"] else 0.0  # type: ignore[assignment]
    return {
        "questions": questions,
        "answered": questions - errors,
        "errors": errors,
        "errors_by_kind": dict(Counter(error_kind(r.error) for r in records if r.error)),
        "correct": correct,
        "accuracy": correct / questions if questions else None,
        "accuracy_ci95": list(interval) if (interval := wilson_interval(correct, questions)) else None,
        "chunks_with_2plus_answers": compared,
        "unanimous_chunks": unanimous,
        "consensus_rate": unanimous / compared if compared else None,
        "final_chunk_disagreements": disagreed,
        "vote_right_on_disagreement": vote_right_on_disagreement,
        "any_node_right": any_right,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else None,
        "per_node": per_node,
    }
