"""Stage 3: stream a chunk's answer from its nodes in parallel; re-route around failures.

The only stage that does I/O, and it does it through the ``NodeConnector`` protocol
(the real one is gRPC, see ``coordinator.node_client``). Each redundancy slot streams
from one node; when that node fails, times out or returns nothing, the slot moves on to
the next best node that has not been tried for this chunk.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dellm.coordinator.config import DispatchConfig, RouteConfig
from dellm.coordinator.errors import NodeCallError, NoNodesAvailableError
from dellm.coordinator.pipeline.route import Shortlist, route_chunk
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.types import (
    Assignment,
    Chunk,
    ChunkAssigned,
    ChunkRequest,
    ChunkToken,
    NodeAnswer,
    NodeRecord,
    PipelineEvent,
    StreamPiece,
)
from dellm.node.backends.base import confidence_from_logprobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchOutcome:
    answers: list[NodeAnswer]
    cancelled: tuple[str, ...] = ()  # nodes whose streams were stopped once the chunk was settled


class NodeConnector(Protocol):
    """Streams one chunk answer from one node (raises NodeCallError on failure)."""

    def stream(self, node: NodeRecord, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]: ...


async def stream_answer(
    node: NodeRecord,
    request: ChunkRequest,
    connector: NodeConnector,
    config: DispatchConfig,
    emit: Callable[[PipelineEvent], None],
) -> NodeAnswer:
    """One node's whole answer to one chunk, its tokens emitted as they arrive. Never raises
    for a node's fault: the failure is in the returned answer's ``error``."""
    started = time.perf_counter()
    first_token_ms: float | None = None
    parts: list[str] = []
    logprobs: list[float] = []
    reported_confidence = 0.0
    finish = ""
    error: str | None = None
    pieces = size = 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(config.first_token_timeout_s) as deadline:
            async for piece in connector.stream(node, request, config.answer_timeout_s):
                if first_token_ms is None:
                    first_token_ms = (time.perf_counter() - started) * 1000
                    deadline.reschedule(loop.time() + config.answer_timeout_s)
                pieces += 1
                size += len(piece.text.encode("utf-8"))
                if pieces > config.max_answer_pieces or size > config.max_answer_bytes:
                    error = (f"cut off: streamed more than {config.max_answer_pieces} messages or "
                             f"{config.max_answer_bytes} bytes")
                    break
                if piece.text:
                    parts.append(piece.text)
                    emit(ChunkToken(request.chunk_id, node.node_id, piece.text, len(piece.logprobs) or 1))
                logprobs.extend(piece.logprobs)
                if piece.done:
                    finish, reported_confidence = piece.finish_reason, piece.confidence
                    break
            else:
                error = "stream ended without a final message"
    except NodeCallError as exc:
        error = f"{exc.code}: {exc.details}"
    except TimeoutError:
        error = "timed out" if first_token_ms is not None else "no first token before the deadline"
    text = "".join(parts)
    if error is None and not text.strip():
        error = "empty answer"
    confidence = confidence_from_logprobs(logprobs) if logprobs else (reported_confidence or 0.5)
    return NodeAnswer(
        chunk_id=request.chunk_id,
        node_id=node.node_id,
        text=text,
        confidence=confidence,
        latency_ms=(time.perf_counter() - started) * 1000,
        first_token_ms=first_token_ms,
        tokens=len(logprobs),
        finish_reason=finish,
        error=error,
    )


async def dispatch_chunk(
    chunk: Chunk,
    request: ChunkRequest,
    *,
    nodes: Callable[[], NodeTable],
    in_flight: dict[str, int],
    connector: NodeConnector,
    route_config: RouteConfig,
    config: DispatchConfig,
    emit: Callable[[PipelineEvent], None],
    on_answer: Callable[[NodeAnswer], None],
    settled: Callable[[Sequence[NodeAnswer]], bool] | None = None,
    rng: random.Random | None = None,
    shortlist: Shortlist | None = None,
) -> DispatchOutcome:
    """All answers to ``chunk``, failed ones included (they are penalised in stage 6).

    Once ``settled(answers)`` holds (the answers so far already agree, or one is verified),
    the streams still running are cancelled: redundancy without paying twice.
    """
    shortlist = shortlist or Shortlist(route_config)
    snapshot: dict[str, NodeRecord] = {}  # the records of the nodes routed to, as routing saw them

    def route(count: int | None, exclude: frozenset[str]) -> Assignment:
        candidates = shortlist.candidates(nodes(), chunk.operation.value, in_flight, exclude, rng)
        assignment = route_chunk(chunk, candidates, in_flight, route_config, count=count, exclude=exclude, rng=rng)
        snapshot.update((n.node_id, n) for n in candidates if n.node_id in assignment.node_ids)
        return assignment

    assignment = route(None, frozenset())
    emit(ChunkAssigned(assignment))
    tried = set(assignment.node_ids)
    answers: list[NodeAnswer] = []

    def reserve(node_id: str) -> None:  # counted from routing on, so concurrent chunks spread out
        in_flight[node_id] = in_flight.get(node_id, 0) + 1

    async def attempt(node_id: str) -> NodeAnswer:
        try:
            node = snapshot.get(node_id)
            if node is None:
                return NodeAnswer(chunk.chunk_id, node_id, "", 0.0, 0.0, error="node left the cluster")
            return await stream_answer(node, request, connector, config, emit)
        finally:
            in_flight[node_id] -= 1

    def next_node(reason: str) -> str | None:
        """Route one more node for this chunk (never one already tried), announced as a retry."""
        try:
            extra = route(1, frozenset(tried))
        except NoNodesAvailableError:
            return None
        node_id = extra.node_ids[0]
        tried.add(node_id)
        reserve(node_id)
        emit(ChunkAssigned(Assignment(chunk.chunk_id, (node_id,), retry=True, reason=reason)))
        return node_id

    async def hedged(node_id: str) -> list[NodeAnswer]:
        """The answer from ``node_id``; if it runs past its usual time, a second node races it."""
        known = snapshot.get(node_id)
        usual_s = (known.latency_ms if known is not None else None) or 0.0
        hedge_after = max(config.hedge_min_s, config.hedge_factor * usual_s / 1000)
        tasks = {asyncio.ensure_future(attempt(node_id)): node_id}
        finished: list[NodeAnswer] = []
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge_after)
            if done:  # the usual case: answered in time, nothing to race
                return [done.pop().result()]
            hedge = next_node(f"hedge: {node_id} is slower than {hedge_after:.1f}s")
            if hedge is not None:
                tasks[asyncio.ensure_future(attempt(hedge))] = hedge
            for next_done in asyncio.as_completed(list(tasks)):
                answer = await next_done
                finished.append(answer)
                if not answer.failed:
                    break
            return finished
        finally:
            for task, other in tasks.items():
                if not task.done():
                    cancelled.append(other)
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def slot(node_id: str) -> None:
        for _ in range(config.max_attempts):
            results = await hedged(node_id)
            for answer in results:
                answers.append(answer)
                on_answer(answer)
            answer = results[-1]
            if not answer.failed:
                if settled is not None and settled(answers):
                    for other, task in running.items():
                        if other != node_id and not task.done():
                            cancelled.append(other)
                            task.cancel()
                return
            log.warning("node %s failed chunk %s: %s", answer.node_id, chunk.chunk_id, answer.error)
            retry = next_node(f"{answer.node_id} failed: {answer.error}")
            if retry is None:
                return
            running[retry] = running.pop(node_id)
            node_id = retry

    running: dict[str, asyncio.Task[None]] = {}  # the node each slot is streaming from -> its task
    cancelled: list[str] = []
    for node_id in assignment.node_ids:
        reserve(node_id)
    async with asyncio.TaskGroup() as group:
        for node_id in assignment.node_ids:
            running[node_id] = group.create_task(slot(node_id))
    if cancelled:
        log.debug("chunk %s settled early; cancelled %s", chunk.chunk_id, ", ".join(cancelled))
    return DispatchOutcome(answers, tuple(dict.fromkeys(cancelled)))
