"""Hostile and odd input over real gRPC: each gets a clear status, nothing crashes."""

from __future__ import annotations

import grpc
import pytest

from dellm.client.api import DellmClient
from dellm.client.errors import InvalidQueryError
from tests.conftest import Cluster, script

ECHO = [{"pattern": ".", "reply": "Answer: 100"}]


@pytest.mark.parametrize(
    "query",
    [
        "What is 10% of 1000?\x00\x07\x1b[31m",
        "Что такое 10% of 1000? 一千的百分之十是多少？",
        "🙂" * 50 + " What is 10% of 1000?",
    ],
    ids=["control-characters", "mixed-script", "emoji"],
)
async def test_odd_but_valid_queries_are_answered(cluster: Cluster, query: str) -> None:
    await cluster.add_node("a", script(ECHO))
    async with DellmClient(cluster.address) as client:
        events = [event async for event in client.ask(query)]
    assert events[-1].final.answer


async def test_a_huge_query_is_refused_before_any_work(cluster: Cluster) -> None:
    await cluster.add_node("a", script(ECHO))
    async with DellmClient(cluster.address) as client:
        with pytest.raises(InvalidQueryError, match="maximum is 4000"):
            async for _ in client.ask("x" * 1_000_000):
                pass


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff", b"\x0a\x05abc"], ids=["garbage", "truncated"])
async def test_malformed_protobuf_gets_a_status_not_a_crash(cluster: Cluster, payload: bytes) -> None:
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        ask = channel.unary_stream("/dellm.v1.CoordinatorService/Ask", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in ask(payload, timeout=5):
                pass
    # the server's parsing interceptor (protos/malformed.py) refuses the bytes before any servicer runs
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed request: not a valid /dellm.v1.CoordinatorService/Ask request" in caught.value.details()
    # and the coordinator still serves
    await cluster.add_node("a", script(ECHO))
    async with DellmClient(cluster.address) as client:
        assert [e async for e in client.ask("What is 10% of 1000?")][-1].final.answer
