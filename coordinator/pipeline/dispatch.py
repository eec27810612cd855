"""Stage 3: stream a chunk's answer from its nodes in parallel; re-route around failures.

The only stage that does I/O, and it does it through the ``NodeConnector`` protocol
(the real one is gRPC, see ``coordinator.node_client``). Each redundancy slot streams
from one node; when that node fails, times out or returns nothing, the slot moves on to
the next best node that has not been tried for this chunk.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dellm.coordinator.config import DispatchConfig, RouteConfig
from dellm.coordinator.errors import NodeCallError, NoNodesAvailableError
from dellm.coordinator.pipeline.route import (
    LatencyPrior,
    OperationLatencies,
    Shortlist,
    model_of,
    route_chunk,
    strongest_model,
)
from dellm.coordinator.pipeline.stall import StallWatch
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
    watch: StallWatch | None = None,
) -> NodeAnswer:
    """One node's whole answer to one chunk, its tokens emitted as they arrive. Never raises
    for a node's fault: the failure is in the returned answer's ``error``. ``watch`` cuts the
    stream once it stalls (pipeline/stall.py)."""
    received = _Received(started=time.perf_counter())
    try:
        reading = _read_stream(received, node, request, connector, config, emit)
        if watch is None:
            await reading
        else:
            received.error = await watch.guard(reading, received) or received.error
    except NodeCallError as exc:
        received.error = f"{exc.code}: {exc.details}"
    except TimeoutError:
        received.error = "timed out" if received.first_token_ms is not None else "no first token before the deadline"
    return received.answer(request.chunk_id, node.node_id)


def usual_wait_ms(latency_ms: float | None, in_flight: int) -> float | None:
    """How long a node usually takes to answer a request it has just been given: its usual answer time
    for each of the ``in_flight`` requests it holds, this one included (it serves them one at a time), so
    that a node busy with another chunk is not cut as stalled for waiting its turn. None: never measured."""
    return latency_ms * max(in_flight, 1) if latency_ms else None


#: What one logprob counts toward ``max_answer_bytes`` (a float32 on the wire): a node must not get
#: past the bound on an answer's size with evidence instead of text.
LOGPROB_BYTES = 4
_ROUNDING = 1e-3  # how far past its bound a node's float32 figure may stray by rounding (then clamped)


@dataclass
class _Received:
    """What one node has streamed so far: ``stream_answer``'s working state."""

    started: float  # time.perf_counter() when the call began
    first_token_ms: float | None = None
    parts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reported_confidence: float = 0.0  # the node's own figure on its final message, bounded to [0, 1]
    finish: str = ""
    error: str | None = None
    pieces: int = 0
    size: int = 0  # UTF-8 bytes of text plus LOGPROB_BYTES per logprob
    last_piece_at: float = 0.0  # time.perf_counter() of the latest piece (pipeline/stall.py reads it)

    @property
    def first_token_at(self) -> float | None:
        return None if self.first_token_ms is None else self.started + self.first_token_ms / 1000

    def over_bounds(self, piece: StreamPiece, config: DispatchConfig) -> bool:
        """Count ``piece``; true once the answer has grown past the configured bounds."""
        self.last_piece_at = time.perf_counter()
        self.pieces += 1
        self.size += len(piece.text.encode("utf-8")) + LOGPROB_BYTES * len(piece.logprobs)
        return self.pieces > config.max_answer_pieces or self.size > config.max_answer_bytes

    def answer(self, chunk_id: str, node_id: str) -> NodeAnswer:
        text = "".join(self.parts)
        error = self.error
        if error is None and not text.strip():
            error = "empty answer"
        confidence = confidence_from_logprobs(self.logprobs) if self.logprobs else (self.reported_confidence or 0.5)
        return NodeAnswer(
            chunk_id=chunk_id,
            node_id=node_id,
            text=text,
            confidence=confidence,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            first_token_ms=self.first_token_ms,
            tokens=len(self.logprobs),
            finish_reason=self.finish,
            error=error,
        )


async def _read_stream(
    received: _Received,
    node: NodeRecord,
    request: ChunkRequest,
    connector: NodeConnector,
    config: DispatchConfig,
    emit: Callable[[PipelineEvent], None],
) -> None:
    """Read ``node``'s stream into ``received`` until its final piece, a bound or a deadline
    (``first_token_timeout_s`` for the first piece, then ``answer_timeout_s`` for the whole)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(config.first_token_timeout_s) as deadline:
        async for piece in connector.stream(node, request, config.answer_timeout_s):
            if received.first_token_ms is None:
                received.first_token_ms = (time.perf_counter() - received.started) * 1000
                deadline.reschedule(loop.time() + config.answer_timeout_s)
            if received.over_bounds(piece, config):
                received.error = (f"cut off: streamed more than {config.max_answer_pieces} messages or "
                                  f"{config.max_answer_bytes} bytes")
                return
            fault = _malformed(piece)
            if fault is not None:  # nothing of the piece is taken: not its text, not its evidence
                received.error = f"malformed stream: {fault}"
                return
            if piece.text:
                received.parts.append(piece.text)
                emit(ChunkToken(request.chunk_id, node.node_id, piece.text, len(piece.logprobs) or 1))
            received.logprobs.extend(piece.logprobs)
            if piece.done:
                received.finish = piece.finish_reason
                received.reported_confidence = min(1.0, max(0.0, piece.confidence))
                return
        received.error = "stream ended without a final message"


def _malformed(piece: StreamPiece) -> str | None:
    """Why ``piece`` cannot be a model's output, or None: a logprob or confidence that is NaN, infinite,
    or a probability above 1 (past float rounding) is no evidence at all; the node is broken or lying.
    A merely extreme value (a logprob below -100) is possible and only clamped: see
    ``confidence_from_logprobs``."""
    bad = next((v for v in piece.logprobs if not (math.isfinite(v) and v <= _ROUNDING)), None)
    if bad is not None:
        return f"logprob {bad} is not a log-probability (finite, at most 0)"
    if piece.done and not (math.isfinite(piece.confidence) and 0.0 <= piece.confidence <= 1.0 + _ROUNDING):
        return f"confidence {piece.confidence} is not a probability (finite, in [0, 1])"
    return None


def derived_seed(*parts: str | int) -> int:
    """A sampling seed of its own for each combination of ``parts`` (query, chunk, node or sample),
    reproducible, never 0 (0 means "the node's own")."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") or 1


class ChunkDispatch:
    """One chunk's dispatch: its redundancy slots streaming in parallel, each moving on to the next
    best untried node when its node fails, racing a hedge node when its node is slow, and all of
    them stopped once ``settled(answers)`` holds. Built per chunk; ``run()`` once.

    Every node routed to is counted in ``in_flight`` from routing on (so that concurrent chunks
    spread out) until its attempt ends, whichever way it ends. ``run()`` returns all answers, failed
    ones included (stage 6 penalises them), and raises NoNodesAvailableError when no live node can
    take the chunk at all. ``judge`` turns each answer into the one it is judged by before anything
    reads it (a math answer's program, run); ``exclude`` are nodes never to route to (escalation asks
    new ones); ``count`` overrides how many nodes the chunk gets at first.

    ``samples`` (self-consistency, see pipeline/consistency.py) are requests to spread over the nodes in
    order instead of one request for all: the first go to the routed nodes, the strongest model's node
    first, and a node that has answered takes the next while the chunk is not settled.
    """

    def __init__(
        self,
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
        judge: Callable[[NodeAnswer], Awaitable[NodeAnswer]] | None = None,
        exclude: frozenset[str] = frozenset(),
        count: int | None = None,
        samples: Sequence[ChunkRequest] = (),
        latencies: OperationLatencies | None = None,
    ) -> None:
        self._chunk = chunk
        self._latencies = latencies  # each node's time at this chunk's operation, when measured
        self._request = request
        self._nodes = nodes
        self._in_flight = in_flight
        self._connector = connector
        self._route_config = route_config
        self._config = config
        self._emit = emit
        self._on_answer = on_answer
        self._settled = settled
        self._rng = rng
        self._shortlist = shortlist or Shortlist(route_config)
        self._judge = judge  # e.g. a math answer's program run in the sandbox (pipeline/execute.py)
        self._count = count  # nodes for the first assignment; None: by the chunk's complexity
        self._samples = collections.deque(samples)  # requests not yet given to a node
        self._sampling = bool(samples)
        self.snapshot: dict[str, NodeRecord] = {}  # the records of the nodes routed to, as routing saw them
        self._expected_ms: dict[str, float] = {}  # their answer times as routing expected them (route.LatencyPrior)
        self.tried: set[str] = set(exclude)  # every node routed to for this chunk: never routed to twice
        self.answers: list[NodeAnswer] = []  # every answer recorded, failed ones included, in arrival order
        self.running: dict[str, asyncio.Task[None]] = {}  # the node each slot is streaming from -> its task
        self.cancelled: list[str] = []  # nodes whose streams were stopped (repeats possible)

    async def run(self) -> DispatchOutcome:
        assignment = self._route(self._count)
        self._emit(ChunkAssigned(assignment))
        self.tried.update(assignment.node_ids)
        for node_id in assignment.node_ids:
            self._reserve(node_id)
        async with asyncio.TaskGroup() as group:
            for node_id in self._strongest_first(assignment.node_ids):
                self.running[node_id] = group.create_task(self._slot(node_id, self._next_request(node_id)))
        if self.cancelled:
            log.debug("chunk %s settled early; cancelled %s", self._chunk.chunk_id, ", ".join(self.cancelled))
        return DispatchOutcome(self.answers, tuple(dict.fromkeys(self.cancelled)))

    def _strongest_first(self, node_ids: Sequence[str]) -> list[str]:
        """``node_ids`` with the strongest model's nodes first (so that they take the first samples)."""
        if not self._samples:
            return list(node_ids)
        records = [self.snapshot[n] for n in node_ids if n in self.snapshot]
        best = strongest_model(records, self._chunk.operation.value, self._route_config)
        return sorted(node_ids, key=lambda n: n not in self.snapshot or model_of(self.snapshot[n]) != best)

    def _next_request(self, node_id: str) -> ChunkRequest:
        """The next sample when there are samples, else the chunk's request as ``node_id`` gets it."""
        return self._samples.popleft() if self._samples else self._request_for(node_id)

    def _route(self, count: int | None) -> Assignment:
        """``count`` nodes (default: by complexity) not tried yet; their records go into the snapshot."""
        exclude = frozenset(self.tried)
        operation = self._chunk.operation.value
        candidates = self._shortlist.candidates(self._nodes(), operation, self._in_flight, exclude, self._rng)
        if self._latencies is not None:
            candidates = self._latencies.view(candidates, operation)
        assignment = route_chunk(self._chunk, candidates, self._in_flight, self._route_config, count=count,
                                 exclude=exclude, rng=self._rng)
        routed = [n for n in candidates if n.node_id in assignment.node_ids]
        # Only a node not measured yet needs the guess, which reads every candidate: build it only then.
        prior = (LatencyPrior(candidates, self._route_config) if any(n.latency_ms is None for n in routed)
                 else None)
        for node in routed:
            self.snapshot[node.node_id] = node
            self._expected_ms[node.node_id] = prior(node) if prior is not None else node.latency_ms or 0.0
        return assignment

    def _route_one_more(self, reason: str) -> str | None:
        """Route one more node for this chunk (never one already tried), announced as a retry;
        None when no node is left."""
        try:
            extra = self._route(1)
        except NoNodesAvailableError:
            return None
        node_id = extra.node_ids[0]
        self.tried.add(node_id)
        self._reserve(node_id)
        self._emit(ChunkAssigned(Assignment(self._chunk.chunk_id, (node_id,), retry=True, reason=reason)))
        return node_id

    def _reserve(self, node_id: str) -> None:
        self._in_flight[node_id] = self._in_flight.get(node_id, 0) + 1

    def _release(self, node_id: str) -> None:
        self._in_flight[node_id] -= 1

    async def _attempt(self, node_id: str, request: ChunkRequest) -> NodeAnswer:
        """``node_id``'s answer to ``request``; its reservation is released however the attempt ends."""
        try:
            node = self.snapshot.get(node_id)
            if node is None:
                return NodeAnswer(self._chunk.chunk_id, node_id, "", 0.0, 0.0, error="node left the cluster")
            stall = self._config.stall
            usual = usual_wait_ms(node.latency_ms, self._in_flight.get(node_id, 1))
            watch = StallWatch(stall, usual, lambda: self.answers) if stall.enabled else None
            answer = await stream_answer(node, request, self._connector, self._config, self._emit, watch)
            if request.sample >= 0:  # a sample may be asked another way: reward feedback quotes its prompt
                prompt = request.prompt if request.prompt != self._request.prompt else ""
                answer = dataclasses.replace(answer, prompt=prompt, sample=request.sample,
                                             temperature=request.temperature, family=request.family)
            return answer if self._judge is None else await self._judge(answer)
        finally:
            self._release(node_id)

    def _request_for(self, node_id: str) -> ChunkRequest:
        """The chunk's request; sampled (temperature > 0), each node gets its own seed, so that two copies
        of one model give two samples rather than one answer twice."""
        if self._request.temperature <= 0 or self._request.seed:
            return self._request
        return dataclasses.replace(self._request, seed=derived_seed(self._request.query_id, self._request.chunk_id,
                                                                    node_id))

    def _hedge_after(self, node_id: str) -> float:
        """Seconds ``node_id`` may stream before a second node races it: hedge_factor x its usual
        answer time, at least hedge_min_s. A node not measured yet is given the time routing expected of
        its model's size: on a fresh network every node used to be hedged at hedge_min_s, and the demo's
        hedges, queued on the busy 0.5B nodes, then took cores from the 1.5B everyone was waiting for."""
        usual_ms = self._expected_ms.get(node_id, 0.0)
        return max(self._config.hedge_min_s, self._config.hedge_factor * usual_ms / 1000)

    async def _hedged_attempt(self, node_id: str, request: ChunkRequest) -> list[NodeAnswer]:
        """The answer from ``node_id``; if it runs past its usual time, a second node races it and
        the answers up to the first good one are returned (the last is the good one, if any)."""
        hedge_after = self._hedge_after(node_id)
        tasks = {asyncio.ensure_future(self._attempt(node_id, request)): node_id}
        try:
            done, _ = await asyncio.wait(tasks, timeout=hedge_after)
            if done:  # the usual case: answered in time, nothing to race
                return [done.pop().result()]
            hedge = self._route_one_more(f"hedge: {node_id} is slower than {hedge_after:.1f}s")
            if hedge is not None:
                tasks[asyncio.ensure_future(self._attempt(hedge, request))] = hedge
            return await _until_first_good(tasks)
        finally:
            await self._stop(tasks)

    async def _stop(self, tasks: dict[asyncio.Task[NodeAnswer], str]) -> None:
        """Cancel the attempts still streaming (listing their nodes as cancelled) and wait for them."""
        for task, node_id in tasks.items():
            if not task.done():
                self.cancelled.append(node_id)
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _slot(self, node_id: str, request: ChunkRequest) -> None:
        """One redundancy slot: ``node_id``'s answer or, after each failure, the next best untried
        node's, up to ``max_attempts`` nodes; a good answer that settles the chunk stops the others,
        and one that does not takes the next sample, if any, on the same node."""
        attempts = self._config.max_attempts
        if attempts < 1:
            self._release(node_id)  # the slot's node was reserved but is never called
            return
        failures = 0
        while True:
            answer = self._record(await self._hedged_attempt(node_id, request))
            # While sampling, a program that failed is a wrong sample (a vote lost), not a node that failed.
            if not answer.failed or (self._sampling and answer.program_failed):
                if self._settled is not None and self._settled(self.answers):
                    self._cancel_other_slots(node_id)
                    return
                if not self._samples:
                    return
                node_id, request = answer.node_id, self._samples.popleft()  # a hedge that won goes on
                self._reserve(node_id)
                continue
            failures += 1
            log.warning("node %s failed chunk %s: %s", answer.node_id, self._chunk.chunk_id, answer.error)
            retry = self._route_one_more(f"{answer.node_id} failed: {answer.error}") if failures < attempts else None
            if retry is None:
                return
            self.running[retry] = self.running.pop(node_id)
            node_id = retry

    def _record(self, results: list[NodeAnswer]) -> NodeAnswer:
        """Record an attempt's answers in order; the last one decides the slot."""
        for answer in results:
            self.answers.append(answer)
            self._on_answer(answer)
        return results[-1]

    def _cancel_other_slots(self, node_id: str) -> None:
        for other, task in self.running.items():
            if other != node_id and not task.done():
                self.cancelled.append(other)
                task.cancel()


async def _until_first_good(tasks: Iterable[asyncio.Task[NodeAnswer]]) -> list[NodeAnswer]:
    """The answers of racing attempts in the order they finish, up to the first good one."""
    finished: list[NodeAnswer] = []
    for next_done in asyncio.as_completed(list(tasks)):
        answer = await next_done
        finished.append(answer)
        if not answer.failed:
            break
    return finished
