"""Canary chunks: at a low rate, a node gets a question whose answer is known exactly.

A canary looks like any MATH_OP chunk (same prompt, same RPC), so a lazy node, a node that
copies answers, or one that claims a bigger model than it runs cannot tell it apart. Its
answer is checked exactly and rewarded like any verified answer (source "canary"): nodes that
fail canaries lose fitness and end up quarantined from the work they fail at.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.periodic import Periodic
from dellm.coordinator.pipeline.answer import apply_decision
from dellm.coordinator.pipeline.decompose import estimate_complexity, estimate_tokens
from dellm.coordinator.pipeline.dispatch import NodeConnector, stream_answer
from dellm.coordinator.pipeline.execute import judge_by_program
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import build_chunk_prompt, max_tokens_for, system_prompt_for
from dellm.coordinator.pipeline.reward import reward_for
from dellm.coordinator.registry.base import NodeRegistry
from dellm.coordinator.sandbox import ProgramRunner
from dellm.coordinator.types import Chunk, ChunkRequest, NodeFeedback, NodeRecord, RewardDecision, Verdict
from dellm.protos.wire import FeedbackSource, NodeState

log = logging.getLogger(__name__)


def make_canary(rng: random.Random) -> tuple[str, float]:
    """A short arithmetic question and its exact answer."""
    op = rng.choice(["+", "-", "*"])
    a, b = (rng.randint(11, 99), rng.randint(3, 19)) if op == "*" else (rng.randint(100, 999), rng.randint(10, 99))
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", float(value)


@dataclass(frozen=True)
class CanaryResult:
    node_id: str
    question: str
    expected: float
    answer: str
    verdict: Verdict
    fitness_before: float
    fitness_after: float


class CanaryProbe:
    """Sends one canary to a random live node every ``config.canary_interval_s`` (0: never)."""

    def __init__(self, config: CoordinatorConfig, registry: NodeRegistry, connector: NodeConnector,
                 send_feedback: Callable[[str, NodeFeedback], None], rng: random.Random,
                 runner: ProgramRunner | None = None) -> None:
        self._config = config
        self._runner = runner  # the sandbox that runs answers' programs; None: answers are read as stated
        self._registry = registry
        self._connector = connector
        self._send_feedback = send_feedback
        self._rng = rng
        # node id -> (passed, failed) since this coordinator started: shown by ListNodes and /metrics
        self.tally: dict[str, tuple[int, int]] = {}
        self._periodic = Periodic("canaries", self._probe_someone,
                                  lambda: self._rng.expovariate(1 / config.canary_interval_s), pause_first=True)

    def start(self) -> None:
        if self._config.canary_interval_s > 0:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def _probe_someone(self) -> None:
        live = [n for n in self._registry.list_nodes() if n.state == NodeState.UP]
        if live:
            await self.probe(self._rng.choice(live))

    async def probe(self, node: NodeRecord) -> CanaryResult:
        question, expected = make_canary(self._rng)
        chunk = Chunk("canary", Operation.MATH_OP, question, estimate_tokens(question),
                      estimate_complexity(question, Operation.MATH_OP))
        # Asked and judged as a query's arithmetic is: a program when the coordinator runs programs, judged by
        # what it computes (``answer = 59 * 9`` is 531, not the 9 it ends with).
        programs = self._runner is not None
        prompt = build_chunk_prompt(chunk, [], programs=programs, checkable=True)
        dispatch = self._config.dispatch
        request = ChunkRequest(uuid.uuid4().hex[:16], "c1", Operation.MATH_OP, prompt,
                               max_tokens_for(chunk, dispatch, programs=programs, checkable=True),
                               dispatch.temperature,
                               system_prompt_for(chunk, dispatch, programs=programs, checkable=True))
        answer = await judge_by_program(
            await stream_answer(node, request, self._connector, dispatch, lambda event: None), chunk, self._runner)
        got = None if answer.failed else answer.value
        verdict = Verdict.CORRECT if got is not None and abs(got - expected) < 1e-6 else Verdict.WRONG
        reward = reward_for(verdict, answer.latency_ms, self._config.reward)
        decision = RewardDecision(node.node_id, "c1", verdict, reward, FeedbackSource.CANARY, str(int(expected)))
        applied = apply_decision(self._registry, self._send_feedback, decision, Operation.MATH_OP.value,
                                 self._config.reward, query_id=request.query_id, prompt=prompt, answer=answer.text)
        before, after = applied.fitness_before, applied.fitness_after
        passed, failed = self.tally.get(node.node_id, (0, 0))
        self.tally[node.node_id] = (passed + 1, failed) if verdict is Verdict.CORRECT else (passed, failed + 1)
        log.info("canary to %s: %s -> %r (%s), fitness %.3f -> %.3f", node.node_id, question, answer.text[-40:],
                 verdict.value, before, after)
        return CanaryResult(node.node_id, question, expected, answer.text, verdict, before, after)
