"""What answers say, read exactly: numbers, normal forms, and the arithmetic a chunk asks for.

One home for answer reading, shared by the stages: dispatch (what a dependent step is told),
assemble (which answers are the same answer), synthesize (is a result kept) and reward (is an answer
right). Pure: no I/O.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping

from dellm.coordinator.pipeline.operations import Operation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_MARKER = re.compile(r"\b(?:final answer|answer|result|total)\b\s*(?:is|:|=)", re.I)
_WORD = re.compile(r"[a-z0-9]+")
TEXT_SIMILARITY = 0.6  # word-set Jaccard at or above which two free-text answers count as one
def is_degenerate(text: str) -> bool:
    """True for output that loops ("- 1000 * 0.10 = 1000 - 1000 * 0.10 = 1000 ..."): a small model's
    failure mode, malformed rather than an answer."""
    words = text.lower().split()
    if len(words) < 12:
        return False
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(words)) / len(words) < 0.3 or len(set(trigrams)) / len(trigrams) < 0.4


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
