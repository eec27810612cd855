"""The GSM8K data of ``dellm bench gsm8k``: problems read from the JSONL file and their numeric labels.

A problem's label is the text after the last ``####`` of its solution, thousands separators and
dollar signs removed; every label of the GSM8K test set is a finite number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


class BenchError(ValueError):
    """The benchmark's parameters or data cannot give a meaningful run."""


@dataclass(frozen=True)
class Problem:
    index: int  # 0-based position in the data file
    question: str
    label: str  # the final answer after '####', thousands separators removed
    value: float


def parse_label(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after its last '####', without commas."""
    if "####" not in answer:
        raise ValueError("no '####' line in the solution")
    label = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "").strip()
    try:
        value = float(label)
    except ValueError as exc:
        raise ValueError(f"the final answer {label!r} is not a number") from exc
    if not math.isfinite(value):
        raise ValueError(f"the final answer {label!r} is not a finite number")
    return label


def count_problems(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def load_problems(path: Path, start: int, count: int) -> list[Problem]:
    """Problems ``start .. start+count`` (0-based, blank lines skipped) of a GSM8K JSONL file."""
    problems: list[Problem] = []
    if count <= 0:
        return problems
    with path.open(encoding="utf-8") as f:
        index = 0
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if index >= start:
                try:
                    row = json.loads(line)
                    label = parse_label(str(row["answer"]))
                    question = str(row["question"]).strip()
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise BenchError(f"{path} line {line_number}: not a GSM8K problem ({exc})") from exc
                problems.append(Problem(index, question, label, float(label)))
                if len(problems) == count:
                    break
            index += 1
    return problems
