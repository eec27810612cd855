"""Stage 6: a verdict on every node answer, the seed's reward, and the fitness update.

Evidence, strongest first: an exact arithmetic check when the chunk's arithmetic can be
read from its text; otherwise agreement with the vote winner when at least two nodes gave
the winning answer. A lone answer, or two that disagree, earn no reward either way:
fitness must not grow from a node agreeing with itself, nor fall on a coin toss. A failed
stream, an empty or degenerate (looping) answer, or a timeout is wrong. Pure: no I/O.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping

from dellm.coordinator.config import RewardConfig
from dellm.coordinator.pipeline.assemble import (
    answers_match,
    format_number,
    normalize_answer,
    parse_number,
    reference_key,
)
from dellm.coordinator.types import ChunkResult, NodeAnswer, Operation, RewardDecision, Verdict
from dellm.protos.wire import VERIFIED_SOURCES, FeedbackSource

_PERCENT_OF = re.compile(
    r"(\d[\d,]*(?:\.\d+)?)\s*%\s*(?:interest\s+|tax\s+|tip\s+|discount\s+)?(?:of|on)\s+\$?\s*(\d[\d,]*(?:\.\d+)?)",
    re.I,
)
_WORD_OPERATORS = (
    (re.compile(r"\bdivided\s+by\b", re.I), "/"),
    (re.compile(r"\b(?:multiplied\s+by|times)\b", re.I), "*"),
    (re.compile(r"\bplus\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
)

_OPERAND = r"\(?\s*-?\d[\d,]*(?:\.\d+)?\s*\)?"
# A whole expression, not part of a longer token ("2.5 * 4e3" is not read as 2.5 * 4).
_EXPRESSION = re.compile(rf"(?<![\w.]){_OPERAND}(?:\s*[-+*/x×÷^]\s*{_OPERAND})+(?![\w.]*\d|[a-wyzA-Z])")
_BINARY: Mapping[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError(f"unsupported expression element {type(node).__name__}")


@functools.lru_cache(maxsize=4096)  # read three times per chunk (prompt, settling, reward): parse once
def exact_answer(text: str) -> float | None:
    """The value of the arithmetic a chunk asks for, when it can be read exactly; else None.

    Handles "X% [interest] of/on [$]Y" and plain expressions such as "12 * 7 + 3" or
    "15 plus 27". Word problems ("Janet has 16 eggs...") are not read: None.
    """
    percent = _PERCENT_OF.findall(text)
    if len(percent) == 1:
        rate, base = (parse_number(x) for x in percent[0])
        if rate is not None and base is not None:
            return rate * base / 100.0
    spelled = text
    for pattern, symbol in _WORD_OPERATORS:
        spelled = pattern.sub(symbol, spelled)
    expressions = _EXPRESSION.findall(spelled)
    if len(expressions) != 1:
        return None
    source = expressions[0].replace(",", "").replace("×", "*").replace("x", "*").replace("÷", "/")
    source = source.replace("^", "**")
    try:
        value = _evaluate(ast.parse(source, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def speed_bonus(latency_ms: float, config: RewardConfig) -> float:
    return config.max_speed_bonus * max(0.0, 1.0 - latency_ms / config.speed_reference_ms)




def reward_for(verdict: Verdict, latency_ms: float, config: RewardConfig, *, verified: bool = True) -> float:
    """+0.05 when correct, plus the speed bonus only when the answer was verified; -0.05 when wrong."""
    if verdict is Verdict.CORRECT:
        return config.correct_reward + (speed_bonus(latency_ms, config) if verified else 0.0)
    if verdict is Verdict.WRONG:
        return config.wrong_reward
    return 0.0


def update_fitness(old: float, reward: float, config: RewardConfig) -> float:
    """The seed's moving average, 0.9 x old + 0.1 x score, with the reward scored into [0, 1].

    score maps the reward range linearly: a wrong answer (-0.05) scores 0, a correct but
    slow one (+0.05) 2/3, a correct instant one (+0.10) 1. So fitness stays in [0, 1] and
    reads as "how often, and how fast, this node is right".
    """
    low = config.wrong_reward
    high = config.correct_reward + config.max_speed_bonus
    score = min(1.0, max(0.0, (reward - low) / (high - low)))
    return config.fitness_decay * old + (1.0 - config.fitness_decay) * score


def judge_chunk(
    result: ChunkResult, answers: list[NodeAnswer], config: RewardConfig, label: str | None = None
) -> list[RewardDecision]:
    """One decision per node answer to the chunk of ``result``.

    Evidence, strongest first: a ground-truth ``label`` (benchmark mode), the exact value of
    readable arithmetic, a real majority of the vote; otherwise no verdict.
    """
    chunk = result.chunk
    expected = exact_answer(chunk.text) if chunk.operation is Operation.MATH_OP else None
    reference = reference_key(chunk.operation, expected, label)
    winners = set(result.winning_node_ids)
    malformed = {v.node_id for v in result.votes if v.group < 0}
    truth_text = label if label else (format_number(expected) if expected is not None else "")
    decisions: list[RewardDecision] = []
    for answer in answers:
        if answer.failed or not answer.text.strip() or answer.node_id in malformed:
            verdict, source, truth = Verdict.WRONG, FeedbackSource.FAILURE, truth_text
        elif reference is not None:
            right = answers_match(normalize_answer(answer.text, chunk.operation), reference)
            source = FeedbackSource.LABEL if label else FeedbackSource.EXACT_CHECK
            verdict, truth = (Verdict.CORRECT if right else Verdict.WRONG), truth_text
        elif len(winners) >= 2:  # a real majority: at least two nodes gave the winning answer
            verdict = Verdict.CORRECT if answer.node_id in winners else Verdict.WRONG
            source, truth = FeedbackSource.VOTE, result.answer
        else:
            verdict, source, truth = Verdict.UNKNOWN, FeedbackSource.NONE, ""
        reward = reward_for(verdict, answer.latency_ms, config, verified=source in VERIFIED_SOURCES)
        decisions.append(RewardDecision(answer.node_id, chunk.chunk_id, verdict, reward, source, truth))
    return decisions
