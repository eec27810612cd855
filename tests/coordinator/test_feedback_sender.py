"""Feedback delivery: gathered per node and sent in one call, with a fallback for nodes without FeedbackBatch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from dellm.coordinator.node_client import FeedbackSender, NodePool
from dellm.coordinator.types import NodeFeedback, Verdict
from dellm.protos import dellm_pb2, dellm_pb2_grpc


class RecordingNode(dellm_pb2_grpc.NodeServiceServicer):
    """A node servicer that records the feedback calls it gets (FeedbackBatch included)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def Feedback(self, request: dellm_pb2.NodeFeedbackRequest, context: grpc.aio.ServicerContext
                       ) -> dellm_pb2.NodeFeedbackReply:
        self.calls.append(("Feedback", [request.query_id]))
        return dellm_pb2.NodeFeedbackReply(stored=len(self.calls))

    async def FeedbackBatch(self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
                            ) -> dellm_pb2.NodeFeedbackReply:
        self.calls.append(("FeedbackBatch", [item.query_id for item in request.items]))
        return dellm_pb2.NodeFeedbackReply(stored=len(self.calls))


class OlderNode(RecordingNode):
    """A node from before FeedbackBatch: the servicer base class answers it with UNIMPLEMENTED."""

    FeedbackBatch = dellm_pb2_grpc.NodeServiceServicer.FeedbackBatch  # type: ignore[assignment]


async def _serve(servicer: RecordingNode) -> AsyncIterator[str]:
    server = grpc.aio.server()
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _feedback(query_id: str) -> NodeFeedback:
    return NodeFeedback(query_id, "c1", "What is 2 + 2?", "4", Verdict.CORRECT, 0.05, "4", 0.55, "exact_check")


async def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_feedback_within_the_linger_goes_in_one_call() -> None:
    node = RecordingNode()
    pool = NodePool()
    async for address in _serve(node):
        sender = FeedbackSender(pool, linger_s=0.2, timeout_s=5.0)
        for i in range(5):
            sender.send("n1", address, _feedback(f"q{i}"))
        await _wait_for(lambda: node.calls)
        await sender.close()
        await pool.close()
    assert node.calls == [("FeedbackBatch", ["q0", "q1", "q2", "q3", "q4"])]


async def test_close_sends_what_is_still_queued() -> None:
    node = RecordingNode()
    pool = NodePool()
    async for address in _serve(node):
        sender = FeedbackSender(pool, linger_s=60.0, timeout_s=5.0)
        sender.send("n1", address, _feedback("q1"))
        await sender.close()
        await pool.close()
    assert node.calls == [("FeedbackBatch", ["q1"])]


async def test_an_older_node_gets_one_feedback_call_per_answer() -> None:
    node = OlderNode()
    pool = NodePool()
    async for address in _serve(node):
        sender = FeedbackSender(pool, linger_s=0.05, timeout_s=5.0)
        sender.send("n1", address, _feedback("q1"))
        sender.send("n1", address, _feedback("q2"))
        await _wait_for(lambda: len(node.calls) == 2)
        sender.send("n1", address, _feedback("q3"))  # the client now knows: no second UNIMPLEMENTED
        await sender.close()
        await pool.close()
    assert node.calls == [("Feedback", ["q1"]), ("Feedback", ["q2"]), ("Feedback", ["q3"])]


async def test_an_unreachable_node_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    pool = NodePool()
    sender = FeedbackSender(pool, linger_s=0.01, timeout_s=0.5)
    with caplog.at_level(logging.WARNING):
        sender.send("gone", "127.0.0.1:9", _feedback("q1"))
        sender.send("gone", "127.0.0.1:9", _feedback("q2"))
        await _wait_for(lambda: "not delivered" in caplog.text)
        await sender.close()
    await pool.close()
    assert "feedback on 2 answer(s) to node gone not delivered" in caplog.text
