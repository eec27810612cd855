"""Rescore recorded GSM8K network runs under other ways of choosing an answer (issue 13's analysis).

Reads the ``results.json`` of paired or sampled `dellm bench gsm8k` runs (every network answer is recorded)
and prints, per run and in total:

- each method's accuracy (its first answer in each problem), the method read from the answer's text: a
  ``def solution()`` function, another program, or worked steps in words;
- how often an answer ``execute.implausible`` rejects was right, and how often the greedy program was right
  when plausible;
- the right answers that three rules would have served from the same answers: the recorded vote, the
  greedy program alone, and the plausible program with a vote of the rest only when it is not
  (``coordinator/pipeline/consistency.py``; the vote ranked as ``assemble._majority_of_samples`` ranks it).

The rules only choose among the answers recorded: a rule that would have asked for different answers
cannot be measured this way. Usage::

    python scripts/gsm8k_rescore.py bench-results/gsm8k50b/results.json bench-results/gsm8k100/results.json \\
        bench-results/gsm8k150/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dellm.coordinator.pipeline.execute import implausible
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.types import Chunk

FAMILY = {"function": "program", "program": "program", "words": "words"}


@dataclass(frozen=True)
class Answer:
    method: str  # "function" | "program" | "words"
    value: float | None  # its judged number, a sign slip judged by its size (execute._magnitude); None: failed


@dataclass(frozen=True)
class Problem:
    run: str
    index: int
    question: str
    label: float
    recorded_right: bool
    answers: tuple[Answer, ...]  # in arrival order


def method_of(text: str) -> str:
    if "def solution" in text:
        return "function"
    if "```" in text or re.search(r"^\s*answer\s*=", text, re.M):
        return "program"
    return "words"


def load(path: Path) -> list[Problem]:
    results = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for record in results["records"]:
        if not record["phase"].startswith("samples_"):
            continue
        answers = []
        for chunk in record.get("chunks", []):
            for vote in chunk["votes"]:
                value = None if vote.get("failed") else vote.get("number")
                answers.append(Answer(method_of(vote["answer"]), None if value is None else abs(value)))
        problems.append(Problem(path.parent.name, record["index"], record["question"],
                                float(record["label"].replace(",", "")), bool(record["correct"]), tuple(answers)))
    return problems


def same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def plausible(problem: Problem, value: float | None) -> bool:
    return implausible(Chunk("c1", Operation.MATH_OP, problem.question, 10, 0.9), value) is None


def vote(problem: Problem, answers: tuple[Answer, ...]) -> float | None:
    """The recorded vote's order: plausible, both families agreeing (the larger such group), the larger group,
    the earliest."""
    groups: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer.value is None:
            continue
        group = next((g for g in groups if same(answers[g[0]].value, answer.value)), None)
        if group is None:
            groups.append([i])
        else:
            group.append(i)
    if not groups:
        return None

    def rank(group: list[int]) -> tuple[bool, bool, int, int, int]:
        spans = len({FAMILY[answers[i].method] for i in group}) >= 2
        return plausible(problem, answers[group[0]].value), spans, len(group) if spans else 0, len(group), -group[0]

    return answers[max(groups, key=rank)[0]].value


def first_program(problem: Problem) -> Answer | None:
    return next((a for a in problem.answers if a.method == "program"), None)


def program_first(problem: Problem) -> float | None:
    """The greedy program when plausible, else the vote over every answer."""
    program = first_program(problem)
    if program is not None and program.value is not None and plausible(problem, program.value):
        return program.value
    return vote(problem, problem.answers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="results.json of recorded network runs")
    args = parser.parse_args(argv)
    problems = [p for path in args.results for p in load(path)]
    if not problems:
        print("no recorded network answers in these files", file=sys.stderr)
        return 1
    right: Counter[str] = Counter()
    asked: Counter[str] = Counter()
    implausible_right: Counter[bool] = Counter()
    program_plausible: Counter[tuple[bool, bool]] = Counter()
    served: dict[str, Counter[str]] = {"recorded vote": Counter(), "greedy program alone": Counter(),
                                       "plausible program, else the vote": Counter()}
    for problem in problems:
        for method in dict.fromkeys(a.method for a in problem.answers):
            first = next(a for a in problem.answers if a.method == method)
            asked[method] += 1
            right[method] += same(first.value, problem.label)
        for answer in problem.answers:
            if answer.value is not None and not plausible(problem, answer.value):
                implausible_right[same(answer.value, problem.label)] += 1
        program = first_program(problem)
        if program is not None:
            program_plausible[plausible(problem, program.value), same(program.value, problem.label)] += 1
        served["recorded vote"][problem.run] += problem.recorded_right
        served["greedy program alone"][problem.run] += program is not None and same(program.value, problem.label)
        served["plausible program, else the vote"][problem.run] += same(program_first(problem), problem.label)
    runs = list(dict.fromkeys(p.run for p in problems))
    print(f"{len(problems)} problems in {len(runs)} run(s): {', '.join(runs)}")
    print("first answer of each method right: " + "; ".join(
        f"{m} {right[m]}/{asked[m]} ({right[m] / asked[m]:.0%})" for m in ("program", "words", "function") if asked[m]))
    print(f"answers: {sum(len(p.answers) for p in problems)}; implausible: {sum(implausible_right.values())}, "
          f"of them right {implausible_right[True]}")
    print(f"greedy program right when plausible: {program_plausible[True, True]}/"
          f"{program_plausible[True, True] + program_plausible[True, False]}; when implausible: "
          f"{program_plausible[False, True]}/{program_plausible[False, True] + program_plausible[False, False]}")
    for rule, counts in served.items():
        print(f"{rule:34s} " + "  ".join(f"{run} {counts[run]}" for run in runs) + f"  total {sum(counts.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
