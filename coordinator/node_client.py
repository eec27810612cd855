"""How the coordinator calls nodes: one gRPC channel per node, protobuf kept at this edge.

Every channel comes from ``node.serving.channel``, so calls carry the cluster token and use TLS
exactly as the coordinator's own ``SecurityConfig`` says (Generate, Feedback, Info, health checks
and admission probes alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dellm.coordinator.convert import VERDICTS
from dellm.coordinator.errors import NodeCallError
from dellm.coordinator.types import ChunkRequest, NodeFeedback, StreamPiece
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.security import SecurityConfig
from dellm.protos.transport import channel
from dellm.protos.wire import NodeDescription, description_from_proto

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 20_000),  # notice a dead peer on an idle channel
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
)

def _feedback_to_proto(feedback: NodeFeedback) -> dellm_pb2.NodeFeedbackRequest:
    return dellm_pb2.NodeFeedbackRequest(
        query_id=feedback.query_id, chunk_id=feedback.chunk_id, prompt=feedback.prompt, answer=feedback.answer,
        verdict=VERDICTS[feedback.verdict], reward=feedback.reward, correct_answer=feedback.correct_answer,
        fitness=feedback.fitness, source=feedback.source,
    )


class FeedbackSender:
    """Feedback to nodes, gathered per node for ``linger_s`` and sent in one call per node.

    A query rewards every node that answered it; one unary call per answer cost the coordinator
    more than the query's own routing. Sending never blocks the caller, and a failed delivery is
    logged (with how many answers it carried), never raised: feedback is how nodes learn, not part
    of anyone's answer.
    """

    def __init__(self, pool: NodePool, linger_s: float, timeout_s: float) -> None:
        self._pool = pool
        self._linger_s = linger_s
        self._timeout_s = timeout_s
        self._queued: dict[str, tuple[str, list[NodeFeedback]]] = {}  # node id -> (address, feedback)
        self._flushing: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def send(self, node_id: str, address: str, feedback: NodeFeedback) -> None:
        queued = self._queued.get(node_id)
        if queued is None or queued[0] != address:
            queued = self._queued[node_id] = (address, queued[1] if queued else [])
        queued[1].append(feedback)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Sleep out the linger, then send everything queued; stop when nothing more came."""
        while self._queued:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._linger_s)
            self._send_queued()

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, {}
        for node_id, (address, batch) in queued.items():
            task = asyncio.get_running_loop().create_task(self._deliver(node_id, address, batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)

    async def _deliver(self, node_id: str, address: str, batch: list[NodeFeedback]) -> None:
        try:
            await self._pool.client(node_id, address).feedback_batch(batch, self._timeout_s)
        except NodeCallError as exc:
            log.warning("feedback on %d answer(s) to node %s not delivered: %s", len(batch), node_id, exc)

    async def close(self) -> None:
        """Send what is queued now, and wait (up to the call timeout) for deliveries to end."""
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._send_queued()
        if self._flushing:
            await asyncio.wait(self._flushing, timeout=self._timeout_s)


class NodeClient:
    """Calls to one node. Every call has a deadline; errors come out as NodeCallError."""

    def __init__(self, node_id: str, address: str, security: SecurityConfig | None = None) -> None:
        self.node_id = node_id
        self.address = address
        self._channel = channel(address, security or SecurityConfig(), options=CHANNEL_OPTIONS)
        self._stub = dellm_pb2_grpc.NodeServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._batch_feedback = True  # until the node says UNIMPLEMENTED

    def _error(self, exc: grpc.aio.AioRpcError) -> NodeCallError:
        return NodeCallError(self.node_id, exc.code().name, exc.details() or "")

    async def info(self, timeout: float) -> NodeDescription:
        try:
            return description_from_proto(await self._stub.Info(dellm_pb2.InfoRequest(), timeout=timeout))
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def connect(self, timeout: float) -> bool:
        """Open the channel now, so that the node's first chunk does not pay for the connection
        (and its first latency sample is not inflated by it)."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            return False
        return True

    async def info_once(self, timeout: float) -> NodeDescription:
        """Info over a channel opened for this one call (for addresses not kept in the pool)."""
        try:
            return await self.info(timeout)
        finally:
            await self.close()

    async def healthy(self, timeout: float) -> bool:
        """Whether the node's grpc.health.v1 service says SERVING within ``timeout``."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def generate(self, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]:
        call = self._stub.Generate(
            dellm_pb2.GenerateRequest(
                query_id=request.query_id,
                chunk_id=request.chunk_id,
                operation=dellm_pb2.Operation.Value(request.operation.value),
                prompt=request.prompt,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                system=request.system,
                seed=request.seed,
            ),
            timeout=timeout,
        )
        try:
            async for message in call:
                yield StreamPiece(message.text, tuple(message.logprobs), message.done, message.finish_reason,
                                  message.confidence)
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()  # no-op when finished; stops the node's work when we stopped early

    async def feedback_batch(self, batch: Sequence[NodeFeedback], timeout: float) -> int:
        """Deliver feedback for several answers in one call (one by one to a node without FeedbackBatch)."""
        items = [_feedback_to_proto(f) for f in batch]
        try:
            if self._batch_feedback:
                try:
                    reply = await self._stub.FeedbackBatch(dellm_pb2.NodeFeedbackBatch(items=items), timeout=timeout)
                    return int(reply.stored)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self._batch_feedback = False  # an older node: Feedback only
            stored = 0
            for item in items:
                stored = int((await self._stub.Feedback(item, timeout=timeout)).stored)
            return stored
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def close(self) -> None:
        await self._channel.close()


class NodePool:
    """One NodeClient per node id, replaced when the node's address changes."""

    def __init__(self, security: SecurityConfig | None = None) -> None:
        self._clients: dict[str, NodeClient] = {}
        self.in_flight: dict[str, int] = {}
        self._security = security

    def probe(self, node_id: str, address: str) -> NodeClient:
        """A client outside the pool, for one call (``info_once``) to an address not admitted yet."""
        return NodeClient(node_id, address, self._security)

    def client(self, node_id: str, address: str) -> NodeClient:
        existing = self._clients.get(node_id)
        if existing is not None and existing.address == address:
            return existing
        if existing is not None:
            asyncio.get_running_loop().create_task(existing.close())
        client = self._clients[node_id] = NodeClient(node_id, address, self._security)
        return client

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
