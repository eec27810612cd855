"""The coordinator's state and operations, independent of gRPC.

``Coordinator`` owns the registry, the node connections and the synthesizer; the gRPC
servicer in ``coordinator.server`` only translates messages to and from these calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from functools import partial

from coordinator.config import CoordinatorConfig
from coordinator.errors import CoordinatorError, NodeCallError
from coordinator.node_client import ChunkRequest, NodeFeedback, NodePool, StreamPiece
from coordinator.pipeline.answer import PipelineDeps, answer_query, live_nodes
from coordinator.pipeline.decompose import InvalidQueryError
from coordinator.pipeline.reward import reward_for, update_fitness
from coordinator.pipeline.route import NoNodesAvailableError
from coordinator.pipeline.synthesize import Synthesizer
from coordinator.registry.base import NodeRegistry
from coordinator.types import AppliedReward, NodeDescription, NodeRecord, PipelineEvent, RewardDecision, Verdict

log = logging.getLogger(__name__)

START_NODE_HINT = (
    "start one with `dellm-node --model qwen2.5-coder-0.5b-instruct --coordinator HOST:PORT` "
    "(after `dellm models pull qwen2.5-coder-0.5b-instruct`)"
)


class JoinRejectedError(CoordinatorError):
    """A node asked to join but its address does not answer as that node."""


class GrpcNodeConnector:
    """The real NodeConnector: streams over the pool's gRPC channels."""

    def __init__(self, pool: NodePool) -> None:
        self._pool = pool

    def stream(self, node: NodeRecord, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]:
        return self._pool.client(node.node_id, node.info.address).generate(request, timeout)


class Coordinator:
    def __init__(self, config: CoordinatorConfig, registry: NodeRegistry, synthesizer: Synthesizer) -> None:
        self.config = config
        self.registry = registry
        self.synthesizer = synthesizer
        self.pool = NodePool()
        self._background: set[asyncio.Task[None]] = set()

    # --- membership -------------------------------------------------------------------

    async def join(self, claimed: NodeDescription) -> NodeRecord:
        """Register a node after checking that its address answers with the same identity."""
        if not claimed.node_id or not claimed.address:
            raise JoinRejectedError("a joining node must give its node_id and address")
        client = self.pool.client(claimed.node_id, claimed.address)
        try:
            actual = await client.info(self.config.rpc_timeout_s)
        except NodeCallError as exc:
            raise JoinRejectedError(f"node {claimed.node_id} at {claimed.address} did not answer Info: "
                                    f"{exc.details or exc.code}") from exc
        if actual.node_id != claimed.node_id:
            raise JoinRejectedError(f"{claimed.address} answers as node {actual.node_id}, not {claimed.node_id}")
        record = self.registry.upsert_node(actual if actual.address else claimed, now=time.time())
        log.info("node %s joined from %s (%s, %s), fitness %.3f", record.node_id, record.info.address,
                 record.info.model, record.info.backend, record.fitness)
        return record

    def leave(self, node_id: str) -> None:
        self.registry.set_state(node_id, "down", now=time.time())
        log.info("node %s left", node_id)

    def nodes(self) -> list[tuple[NodeRecord, int]]:
        return [(n, self.pool.in_flight.get(n.node_id, 0)) for n in self.registry.list_nodes()]

    # --- queries ----------------------------------------------------------------------

    def check_query(self, query: str) -> None:
        """Fail fast, before any stream starts: InvalidQueryError or NoNodesAvailableError."""
        if not query.strip():
            raise InvalidQueryError("the query is empty")
        if len(query) > self.config.decompose.max_query_chars:
            raise InvalidQueryError(
                f"the query is {len(query)} characters; the maximum is {self.config.decompose.max_query_chars}")
        if not live_nodes(self.registry):
            raise NoNodesAvailableError(f"no nodes are available; {START_NODE_HINT}")

    def ask(self, query: str) -> AsyncIterator[PipelineEvent]:
        self.check_query(query)
        deps = PipelineDeps(self.config, self.registry, GrpcNodeConnector(self.pool), self.pool.in_flight,
                            self.synthesizer, self._send_feedback)
        return answer_query(query, deps)

    async def feedback(self, query_id: str, correct: bool, answer: str = "") -> list[AppliedReward]:
        """A user's verdict on a whole query, applied to the nodes whose answers it used."""
        record = self.registry.get_query(query_id)  # UnknownQueryError -> NOT_FOUND
        verdict = Verdict.CORRECT if correct else Verdict.WRONG
        applied: list[AppliedReward] = []
        for chunk in record.detail["chunks"]:
            for node_answer in chunk["answers"]:
                if not node_answer["in_winning_group"]:
                    continue
                reward = reward_for(verdict, node_answer["latency_ms"], self.config.reward)
                decision = RewardDecision(node_answer["node_id"], chunk["chunk_id"], verdict, reward, "user",
                                          answer or (record.answer if correct else ""))
                update = partial(update_fitness, reward=reward, config=self.config.reward)
                before, after = self.registry.apply_reward(decision.node_id, reward, correct, update)
                applied.append(AppliedReward(decision, before, after))
                self._send_feedback(decision.node_id, NodeFeedback(
                    query_id=query_id, chunk_id=decision.chunk_id, prompt=chunk["prompt"], answer=node_answer["text"],
                    verdict=verdict, reward=reward, correct_answer=decision.correct_answer,
                    fitness=after, source="user"))
        return applied

    def _send_feedback(self, node_id: str, feedback: NodeFeedback) -> None:
        """Deliver feedback to a node in the background; a failure is logged, never raised."""
        try:
            node = self.registry.get(node_id)
        except KeyError:
            return
        client = self.pool.client(node_id, node.info.address)

        async def deliver() -> None:
            try:
                await client.feedback(feedback, self.config.feedback_timeout_s)
            except NodeCallError as exc:
                log.warning("feedback to node %s not delivered: %s", node_id, exc)

        task = asyncio.get_running_loop().create_task(deliver())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background, timeout=self.config.feedback_timeout_s)
        await self.pool.close()
        self.registry.close()
