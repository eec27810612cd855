"""Optional stage-1 planner: ask the coordinator's model for the plan, fall back to the rules.

The model is asked for a JSON list of steps. Its reply is parsed and validated by pure
functions (``parse_model_plan``); anything invalid (not JSON, unknown operations, a step that
depends on an unknown or later step, a cycle, too many steps, text not taken from the query)
is rejected with the reason logged, and the rule-based plan is used instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

from dellm.coordinator.config import DecomposeConfig
from dellm.coordinator.pipeline.decompose import decompose, estimate_complexity, estimate_tokens, validate_plan
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import PLANNER_SYSTEM
from dellm.coordinator.types import Chunk, Plan
from dellm.node.backends.base import BackendError, GenerationRequest, InferenceBackend, stream_generation

log = logging.getLogger(__name__)

_JSON_LIST = re.compile(r"\[.*\]", re.S)
_WORD = re.compile(r"[a-z0-9]+")


class PlanRejectedError(ValueError):
    """The model's plan is unusable; the message says why."""


def parse_model_plan(reply: str, query: str, config: DecomposeConfig) -> Plan:
    """The model's plan as a validated Plan, or PlanRejectedError."""
    match = _JSON_LIST.search(reply)
    if match is None:
        raise PlanRejectedError("no JSON list in the reply")
    try:
        steps = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise PlanRejectedError(f"invalid JSON: {exc}") from exc
    if not isinstance(steps, list) or not steps:
        raise PlanRejectedError("the plan is not a non-empty list")
    if len(steps) > config.max_chunks:
        raise PlanRejectedError(f"{len(steps)} steps; at most {config.max_chunks}")
    query_words = set(_WORD.findall(query.lower()))
    chunks: list[Chunk] = []
    for number, step in enumerate(steps, start=1):
        if not isinstance(step, dict) or not isinstance(step.get("text"), str) or not step["text"].strip():
            raise PlanRejectedError(f"step {number} has no text")
        try:
            operation = Operation(str(step.get("op", "GENERAL_OP")))
        except ValueError as exc:
            raise PlanRejectedError(f"step {number} has an unknown operation {step.get('op')!r}") from exc
        after = step.get("after", [])
        if not isinstance(after, list) or not all(isinstance(a, int) and 1 <= a < number for a in after):
            raise PlanRejectedError(f"step {number} depends on {after!r}: only earlier step numbers are allowed")
        text = " ".join(step["text"].split())
        words = set(_WORD.findall(text.lower()))
        if words and len(words & query_words) < len(words) / 2:
            raise PlanRejectedError(f"step {number} ({text!r}) is not taken from the request")
        chunks.append(Chunk(f"c{number}", operation, text, estimate_tokens(text),
                            estimate_complexity(text, operation), tuple(f"c{a}" for a in after)))
    plan = Plan(query=" ".join(query.split()), chunks=tuple(chunks))
    try:
        validate_plan(plan)
    except ValueError as exc:
        raise PlanRejectedError(str(exc)) from exc
    return plan


class ModelPlanner:
    """Plans with a small model; the rule-based decomposer is the fallback, never an error."""

    def __init__(self, backend: InferenceBackend, config: DecomposeConfig, max_tokens: int = 200,
                 lock: asyncio.Lock | None = None) -> None:
        self._backend = backend
        self._config = config
        self._max_tokens = max_tokens
        self._lock = lock or asyncio.Lock()  # share the synthesizer's lock when it uses the same backend

    async def plan(self, query: str) -> tuple[Plan, str]:
        """(plan, "model" | "rules: <why the model's plan was not used>")."""
        rules = decompose(query, self._config)  # validates the query (InvalidQueryError) first
        request = GenerationRequest(prompt=query, system=PLANNER_SYSTEM, max_tokens=self._max_tokens)
        try:
            reply = "".join([piece.text async for piece in stream_generation(self._backend, request, self._lock)])
            return parse_model_plan(reply, query, self._config), "model"
        except (BackendError, PlanRejectedError) as exc:
            log.info("model plan not used (%s); using the rules", exc)
            return rules, f"rules: {exc}"
