"""A rogue node over real gRPC: impossible logprobs and confidences, and floods of logprobs.

The rogue is a hand-written NodeService servicer (not a backend behind the real node daemon, which
would compute honest figures itself): it streams exactly the TokenChunk messages a broken or lying
node could send. Whatever it sends, the query is answered by the honest node, the rogue's answer
fails with a clear error, and it is rewarded WRONG.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import CoordinatorConfig, RouteConfig
from dellm.coordinator.pipeline.assemble import assemble_chunk
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.types import Chunk, NodeAnswer
from dellm.node.backends.base import confidence_from_logprobs
from dellm.node.daemon import SERVICE_NAME, join_coordinator
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, new_server, set_serving
from dellm.protos.wire import PROTOCOL_VERSION
from tests.conftest import Cluster, script

HONEST = [{"pattern": ".", "reply": "Paris is the capital of France.", "delay": 0.01}]
ROGUE_WORDS = ("Bananas ", "grow ", "on ", "trees.")  # nothing like the honest answer: its own group
ROGUE_ID = "rogue".ljust(32, "0")

Messages = Callable[[], Iterator[dellm_pb2.TokenChunk]]


def words_with(logprob: float, confidence: float = 1.0) -> Messages:
    """The rogue's answer, each word with ``logprob``, then a final message reporting ``confidence``."""
    def messages() -> Iterator[dellm_pb2.TokenChunk]:
        for word in ROGUE_WORDS:
            yield dellm_pb2.TokenChunk(text=word, logprobs=[logprob])
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=confidence,
                                   completion_tokens=len(ROGUE_WORDS))
    return messages


def words_reporting(confidence: float) -> Messages:
    """The rogue's answer without logprobs, so that the final message's ``confidence`` is what counts."""
    def messages() -> Iterator[dellm_pb2.TokenChunk]:
        for word in ROGUE_WORDS:
            yield dellm_pb2.TokenChunk(text=word)
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=confidence)
    return messages


def logprob_flood(per_message: int, messages: int) -> Messages:
    """Tiny text, each message carrying ``per_message`` plausible logprobs (about 4 MB on the wire each)."""
    def flood() -> Iterator[dellm_pb2.TokenChunk]:
        for word in ROGUE_WORDS[:messages]:
            yield dellm_pb2.TokenChunk(text=word, logprobs=[-0.01] * per_message)
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)
    return flood


class RogueNode(dellm_pb2_grpc.NodeServiceServicer):
    """Test double: a node that answers Info honestly and Generate with ``messages``, and records the
    verdicts the coordinator's feedback brings it."""

    def __init__(self, messages: Messages) -> None:
        self.messages = messages
        self.info = dellm_pb2.NodeInfo(node_id=ROGUE_ID, name="rogue", model="rogue", backend="scripted",
                                       protocol_version=PROTOCOL_VERSION, cluster="default")
        self.verdicts: list[int] = []

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info

    async def Generate(self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        for message in self.messages():
            yield message

    async def FeedbackBatch(self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
                            ) -> dellm_pb2.NodeFeedbackReply:
        self.verdicts.extend(item.verdict for item in request.items)
        return dellm_pb2.NodeFeedbackReply(stored=len(self.verdicts))


async def start_rogue(cluster: Cluster, rogue: RogueNode) -> grpc.aio.Server:
    """Serve ``rogue`` on loopback (with grpc.health.v1, as a real node) and join it to ``cluster``."""
    server = new_server()
    rogue.info.address = bind(server, "127.0.0.1:0")
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(rogue, server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    await join_coordinator(cluster.address, rogue.info, timeout=5.0)
    return server


@pytest.fixture
async def both_nodes(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A coordinator that sends every chunk to two nodes, and an honest scripted node."""
    c = Cluster(tmp_path, CoordinatorConfig(route=RouteConfig(redundancy_threshold=0.0), canary_interval_s=0))
    await c.start_coordinator()
    await c.add_node("honest", script(HONEST))
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (words_with(1000.0), "malformed stream: logprob 1000.0 is not a log-probability"),  # overflowed exp()
        (words_with(50.0), "malformed stream: logprob 50.0 is not a log-probability"),  # won with weight 2.6e21
        (words_with(math.nan), "malformed stream: logprob nan is not a log-probability"),
        (words_with(math.inf), "malformed stream: logprob inf is not a log-probability"),
        (words_with(-math.inf), "malformed stream: logprob -inf is not a log-probability"),
        (words_reporting(math.nan), "malformed stream: confidence nan is not a probability"),
        (words_reporting(50.0), "malformed stream: confidence 50.0 is not a probability"),
        (words_reporting(-1.0), "malformed stream: confidence -1.0 is not a probability"),
        # logprobs count 4 bytes each toward the 64 KiB bound: the first million cuts the stream off
        (logprob_flood(1_000_000, 3), "cut off: streamed more than 2048 messages or 65536 bytes"),
    ],
    ids=["logprob+1000", "logprob+50", "logprob-nan", "logprob+inf", "logprob-inf", "confidence-nan",
         "confidence-50", "confidence-negative", "million-logprobs-per-message"],
)
async def test_a_rogue_node_fails_is_penalised_and_the_honest_answer_wins(
    both_nodes: Cluster, messages: Messages, error: str,
) -> None:
    rogue = RogueNode(messages)
    server = await start_rogue(both_nodes, rogue)
    try:
        async with DellmClient(both_nodes.address) as client:
            events = [event async for event in client.ask("Tell me about Paris")]
        result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
        votes = {v.node_id: v for v in result.votes}
        assert votes[ROGUE_ID].failed and votes[ROGUE_ID].error.startswith(error)
        assert not votes[ROGUE_ID].weight
        assert result.answer == "Paris is the capital of France." and not result.winner_node_id.startswith("rogue")
        assert all(0.0 <= v.weight <= 1.0 for v in result.votes)
        final = events[-1].final
        assert final.answer == "Paris is the capital of France."
        penalty = next(r for r in final.rewards if r.node_id == ROGUE_ID)
        assert penalty.verdict == dellm_pb2.WRONG and penalty.source == "failure" and penalty.reward < 0
        assert penalty.fitness_after < penalty.fitness_before
        # ... and the rogue is told so, over its own Feedback RPC
        await both_nodes.wait_for(lambda: rogue.verdicts == [dellm_pb2.WRONG])
    finally:
        await server.stop(None)


async def test_an_honest_stream_at_the_edges_of_the_ranges_is_taken(both_nodes: Cluster) -> None:
    """Not everything unusual is malformed: logprobs below -100 (a model can be that unsure) are clamped,
    and float32 rounding just past 0 is not held against a node."""
    def edges() -> Iterator[dellm_pb2.TokenChunk]:
        yield dellm_pb2.TokenChunk(text="Paris is the capital ", logprobs=[-250.0, 1e-6, 0.0, -0.1])
        yield dellm_pb2.TokenChunk(text="of France.", logprobs=[-0.2, -0.3])
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=1.0000001)

    rogue = RogueNode(edges)
    server = await start_rogue(both_nodes, rogue)
    try:
        async with DellmClient(both_nodes.address) as client:
            events = [event async for event in client.ask("Tell me about Paris")]
    finally:
        await server.stop(None)
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    edge = next(v for v in result.votes if v.node_id == ROGUE_ID)
    assert not edge.failed and 0.0 < edge.confidence < 1.0 and result.unanimous


# --- the bounds themselves, without the network -----------------------------------------------------------


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([1000.0], 1.0), ([50.0, 50.0], 1.0), ([math.inf], 1.0), ([-math.inf], math.exp(-100)),
        ([math.nan], math.exp(-100)), ([-1000.0, 0.0], math.exp(-50)), ([math.log(0.5)] * 3, 0.5), ([], 0.5),
    ],
    ids=["+1000", "+50", "+inf", "-inf", "nan", "below-floor", "honest", "none"],
)
def test_confidence_is_a_probability_whatever_the_logprobs(logprobs: list[float], expected: float) -> None:
    confidence = confidence_from_logprobs(logprobs)
    assert 0.0 <= confidence <= 1.0 and confidence == pytest.approx(expected)


def test_no_vote_outweighs_its_fitness() -> None:
    chunk = Chunk("c1", Operation.SEARCH_OP, "Tell me about Paris", 4, 0.5)
    answers = [NodeAnswer("c1", "rogue", "Bananas grow on trees.", 2.6e21, 1.0),  # what +50 used to give
               NodeAnswer("c1", "nan", "Apples grow on trees.", math.nan, 1.0),
               NodeAnswer("c1", "honest", "Paris is the capital of France.", 0.9, 1.0)]
    result = assemble_chunk(chunk, answers, {"rogue": 0.5, "nan": 0.9, "honest": 0.9})
    weights = {v.node_id: v.weight for v in result.votes}
    assert weights == {"rogue": 0.5, "nan": 0.0, "honest": pytest.approx(0.81)}
    assert result.winner_node_id == "honest"


def test_vote_weight_takes_fitness_and_confidence_within_0_and_1() -> None:
    from dellm.coordinator.pipeline.assemble import vote_weight

    assert vote_weight(7.0, 3.0) == 1.0 and vote_weight(0.0, 1.0) == pytest.approx(0.01)
    assert vote_weight(0.5, math.inf) == 0.0 and vote_weight(math.nan, 0.5) == pytest.approx(0.005)
