"""Slow and silent nodes over real gRPC: a stalled stream is cut soon after another node answered.

Before: a node sending 1 byte a second held each query for 60 s, and a silent node for 20 s, while the
other node had answered in 0.2 s; each cost the node only -0.05.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import CoordinatorConfig, RouteConfig, StallConfig
from dellm.coordinator.pipeline.stall import stall_reason
from dellm.coordinator.types import NodeAnswer
from dellm.node.daemon import SERVICE_NAME, join_coordinator
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, new_server, set_serving
from dellm.protos.wire import PROTOCOL_VERSION
from tests.conftest import Cluster, script

HONEST = [{"pattern": ".", "reply": "Paris is the capital of France.", "delay": 0.01}]
STALLER = "staller".ljust(32, "0")

Stream = Callable[[], AsyncIterator[dellm_pb2.TokenChunk]]


async def slowloris() -> AsyncIterator[dellm_pb2.TokenChunk]:
    for byte in "Paris is the capital of France, slowly.":
        yield dellm_pb2.TokenChunk(text=byte, logprobs=[-0.1])
        await asyncio.sleep(1.0)
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.9)


async def silent() -> AsyncIterator[dellm_pb2.TokenChunk]:
    await asyncio.sleep(60)
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop")


async def slower_but_steady() -> AsyncIterator[dellm_pb2.TokenChunk]:
    for word in ["Paris", "is", "the", "capital", "of", "France."]:
        await asyncio.sleep(0.15)  # 1 s in all, a tenth of the honest rate, but steady
        yield dellm_pb2.TokenChunk(text=word + " ", logprobs=[-0.1])
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.9)


class Streamer(dellm_pb2_grpc.NodeServiceServicer):
    """Test double: a node that streams Generate as ``stream`` says."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.info = dellm_pb2.NodeInfo(node_id=STALLER, name="staller", model="staller", backend="scripted",
                                       protocol_version=PROTOCOL_VERSION, cluster="default")

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info

    async def Generate(self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        async for message in self.stream():
            yield message

    async def FeedbackBatch(self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
                            ) -> dellm_pb2.NodeFeedbackReply:
        return dellm_pb2.NodeFeedbackReply(stored=len(request.items))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, CoordinatorConfig(route=RouteConfig(redundancy_threshold=0.0), canary_interval_s=0))
    await c.start_coordinator()
    await c.add_node("honest", script(HONEST))
    try:
        yield c
    finally:
        await c.close()


async def ask_with(cluster: Cluster, stream: Stream) -> tuple[float, dellm_pb2.ChunkResultEvent, dellm_pb2.FinalEvent]:
    server = new_server()
    streamer = Streamer(stream)
    streamer.info.address = bind(server, "127.0.0.1:0")
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(streamer, server)
    await set_serving(add_health_and_reflection(server, [SERVICE_NAME]), [SERVICE_NAME], True)
    await server.start()
    try:
        await join_coordinator(cluster.address, streamer.info, 5.0)
        started = time.perf_counter()
        async with DellmClient(cluster.address) as client:
            events = [e async for e in client.ask("Tell me about Paris")]
        elapsed = time.perf_counter() - started
    finally:
        await server.stop(None)
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    return elapsed, result, events[-1].final


@pytest.mark.parametrize("stream", [slowloris, silent], ids=["slowloris", "silent"])
async def test_a_stalled_node_is_cut_and_penalised_more_than_a_wrong_answer(pair: Cluster, stream: Stream) -> None:
    elapsed, result, final = await ask_with(pair, stream)
    assert elapsed < 4.0  # was 60 s (slowloris) and 20 s (silent)
    votes = {v.node_id: v for v in result.votes}
    assert votes[STALLER].failed and votes[STALLER].error.startswith("stalled:")
    assert final.answer == "Paris is the capital of France."
    penalties = [r for r in final.rewards if r.node_id == STALLER]
    assert len(penalties) == 2 and all(r.verdict == dellm_pb2.WRONG for r in penalties)
    registry = pair.coordinator.coordinator.registry  # type: ignore[union-attr]
    assert registry.get(STALLER).fitness == pytest.approx(0.5 * 0.9 * 0.9)  # a wrong answer: 0.5 * 0.9


async def test_a_slower_node_that_streams_steadily_is_not_cut(pair: Cluster) -> None:
    _elapsed, result, final = await ask_with(pair, slower_but_steady)
    votes = {v.node_id: v for v in result.votes}
    assert not votes[STALLER].failed, votes[STALLER].error
    assert result.unanimous and not [r for r in final.rewards if r.node_id == STALLER and r.reward < 0]


def test_stall_limits_follow_history_and_the_other_nodes() -> None:
    class Progress:
        def __init__(self, started: float, first: float | None, last: float, pieces: int) -> None:
            self.started, self.first_token_at, self.last_piece_at, self.pieces = started, first, last, pieces
            self.logprobs: list[float] = []

    config = StallConfig()
    fast = NodeAnswer("c1", "fast", "Paris.", 0.9, latency_ms=200.0, tokens=10)
    silent_for = Progress(started=0.0, first=None, last=0.0, pieces=0)
    assert stall_reason(silent_for, None, [], config, now=15.0) is None  # alone and never measured: the deadlines
    assert stall_reason(silent_for, 1000.0, [], config, now=4.0) is None  # 3 x its usual 1 s, at least 5 s
    assert "no first token" in (stall_reason(silent_for, 1000.0, [], config, now=5.5) or "")
    assert stall_reason(silent_for, None, [fast], config, now=0.9) is None
    assert "after another node answered" in (stall_reason(silent_for, None, [fast], config, now=1.1) or "")
    assert stall_reason(silent_for, 6000.0, [fast], config, now=5.9) is None  # a big model: its own usual 6 s
    trickle = Progress(started=0.0, first=0.1, last=4.9, pieces=5)  # 1 token a second
    assert stall_reason(trickle, None, [], config, now=5.0) is None  # alone: above the 0.5 tokens/s floor
    assert "tokens/s" in (stall_reason(trickle, None, [fast], config, now=5.0) or "")  # the other did 50/s
