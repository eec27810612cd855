"""ScriptedBackend: a TEST DOUBLE that answers from a script file instead of a model.

It exists so that tests and benchmarks can run many nodes with known behaviour
(right, wrong, slow, dying mid-stream) without loading weights. It never stands in
for a model in a real deployment; ``Info`` reports its backend as ``scripted``.

Script format (TOML)::

    model = "scripted-good"          # optional, the name the node reports

    [[rule]]
    pattern = "(?i)10% of \\$?1000"  # Python regex searched in the prompt
    reply = "10% of 1000 is 100."
    delay = 0.01                     # seconds before each word (default 0)
    confidence = 0.9                 # probability reported for each word
    fail_after = 3                   # optional: raise after this many words

    [default]                        # used when no rule matches
    reply = "I do not know."

    [arithmetic]                     # optional: "A op B" in the prompt is computed ...
    accuracy = 0.8                   # ... and answered right with this probability,
    seed = 1                         # ... else off by a few (a node of set, known accuracy)
    delay = 0.01
"""

from __future__ import annotations

import math
import random
import re
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece


@dataclass(frozen=True)
class ScriptRule:
    pattern: re.Pattern[str]
    reply: str
    delay: float = 0.0
    confidence: float = 0.9
    fail_after: int | None = None


class ScriptError(ValueError):
    """The script file is missing or malformed."""


_ARITHMETIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x])\s*(-?\d+(?:\.\d+)?)")
_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "x": lambda a, b: a * b,
               "/": lambda a, b: a / b if b else math.nan}


@dataclass
class ArithmeticRule:
    """Answers "A op B" right with probability ``accuracy`` (seeded), else a near miss."""

    accuracy: float
    rng: random.Random
    delay: float = 0.0

    def reply(self, prompt: str) -> str | None:
        match = _ARITHMETIC.search(prompt)
        if match is None:
            return None
        a, op, b = float(match.group(1)), match.group(2), float(match.group(3))
        value = _OPERATIONS[op](a, b)
        if self.rng.random() >= self.accuracy:
            value += self.rng.choice([-10, -2, -1, 1, 2, 10])
        shown = int(value) if value == int(value) else round(value, 4)
        return f"{match.group(0)} = {shown}. Answer: {shown}"


def _parse_rule(raw: dict[str, object], where: str) -> ScriptRule:
    try:
        pattern = re.compile(str(raw.get("pattern", "")))
        reply = str(raw["reply"])
        delay = float(raw.get("delay", 0.0))  # type: ignore[arg-type]
        confidence = float(raw.get("confidence", 0.9))  # type: ignore[arg-type]
        fail_after = raw.get("fail_after")
    except KeyError as exc:
        raise ScriptError(f"{where}: missing key {exc}") from exc
    except (re.error, TypeError, ValueError) as exc:
        raise ScriptError(f"{where}: {exc}") from exc
    if not 0.0 < confidence <= 1.0:
        raise ScriptError(f"{where}: confidence must be in (0, 1], got {confidence}")
    if delay < 0:
        raise ScriptError(f"{where}: delay must be >= 0, got {delay}")
    return ScriptRule(pattern, reply, delay, confidence, None if fail_after is None else int(fail_after))  # type: ignore[call-overload]


class ScriptedBackend:
    """Test double: replies word by word from scripted rules (see module docstring)."""

    def __init__(self, rules: list[ScriptRule], default: ScriptRule, model: str = "scripted",
                 arithmetic: ArithmeticRule | None = None) -> None:
        self._rules = rules
        self._default = default
        self._model = model
        self._arithmetic = arithmetic

    @classmethod
    def from_file(cls, path: Path | None) -> ScriptedBackend:
        if path is None:
            raise ScriptError("the scripted backend needs a script file (--script PATH)")
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ScriptError(f"script file not found: {path}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ScriptError(f"script file {path} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, object], source: str = "<script>") -> ScriptedBackend:
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list):
            raise ScriptError(f"{source}: 'rule' must be an array of tables")
        rules = [_parse_rule(r, f"{source} rule {i + 1}") for i, r in enumerate(raw_rules)]
        raw_default = data.get("default", {"reply": "I do not know."})
        if not isinstance(raw_default, dict):
            raise ScriptError(f"{source}: 'default' must be a table")
        default = _parse_rule(raw_default, f"{source} default")
        arithmetic = None
        raw_arithmetic = data.get("arithmetic")
        if raw_arithmetic is not None:
            if not isinstance(raw_arithmetic, dict):
                raise ScriptError(f"{source}: 'arithmetic' must be a table")
            try:
                accuracy = float(raw_arithmetic.get("accuracy", 1.0))
                arithmetic = ArithmeticRule(accuracy, random.Random(int(raw_arithmetic.get("seed", 0))),
                                            float(raw_arithmetic.get("delay", 0.0)))
            except (TypeError, ValueError) as exc:
                raise ScriptError(f"{source} arithmetic: {exc}") from exc
            if not 0.0 <= accuracy <= 1.0:
                raise ScriptError(f"{source} arithmetic: accuracy must be in [0, 1], got {accuracy}")
        return cls(rules, default, model=str(data.get("model", "scripted")), arithmetic=arithmetic)

    def describe(self) -> BackendDescription:
        return BackendDescription(backend="scripted", model=self._model, quantization="", context_size=0)

    def _rule_for(self, prompt: str) -> ScriptRule:
        rule = next((r for r in self._rules if r.pattern.search(prompt)), None)
        if rule is None and self._arithmetic is not None:
            reply = self._arithmetic.reply(prompt)
            if reply is not None:
                return ScriptRule(re.compile(""), reply, self._arithmetic.delay, 0.9)
        return rule or self._default

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        rule = self._rule_for(request.prompt)
        words = rule.reply.split(" ")
        logprob = math.log(rule.confidence)
        for index, word in enumerate(words):
            if rule.fail_after is not None and index >= rule.fail_after:
                raise BackendError(f"scripted failure after {index} words")
            if index >= request.max_tokens:
                yield TokenPiece("", finish_reason="length")
                return
            if rule.delay and cancel.wait(rule.delay):
                yield TokenPiece("", finish_reason="cancelled")
                return
            if cancel.is_set():
                yield TokenPiece("", finish_reason="cancelled")
                return
            yield TokenPiece(word if index == 0 else " " + word, (logprob,))
        yield TokenPiece("", finish_reason="stop")

    def close(self) -> None:
        return None
