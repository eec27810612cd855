"""The Watch feed: every query the coordinator finishes, from any client, with how it ended; replayed on request."""

from __future__ import annotations

import asyncio

import pytest

from dellm.client.api import DellmClient
from dellm.client.errors import InvalidQueryError, UnavailableError
from dellm.protos import dellm_pb2
from tests.conftest import Cluster, script

RIGHT = [{"pattern": "(?i)10% of", "reply": "10% of 1000 is 100. Answer: 100"}]


async def watch_into(address: str, replay: bool, into: asyncio.Queue[dellm_pb2.QuerySummary]) -> None:
    async with DellmClient(address) as client:
        async for summary in client.watch(replay=replay):
            await into.put(summary)


async def next_summary(queue: asyncio.Queue[dellm_pb2.QuerySummary]) -> dellm_pb2.QuerySummary:
    return await asyncio.wait_for(queue.get(), 10)


async def test_watch_sees_every_outcome_and_replays(cluster: Cluster) -> None:
    queue: asyncio.Queue[dellm_pb2.QuerySummary] = asyncio.Queue()
    watcher = asyncio.create_task(watch_into(cluster.address, False, queue))
    await asyncio.sleep(0.2)  # the watch call is open
    try:
        async with DellmClient(cluster.address) as client:
            with pytest.raises(UnavailableError):
                [e async for e in client.ask("What is 10% of 1000?")]
            nothing = await next_summary(queue)
            assert nothing.outcome == "unavailable" and "dellm-node" in nothing.error
            assert not nothing.HasField("plan") and not nothing.HasField("final")
            await cluster.add_node("a", script(RIGHT, delay=0.01))
            events = [e async for e in client.ask("What is 10% of 1000?")]
            answered = await next_summary(queue)
            assert answered.outcome == "answered" and answered.client == "127.0.0.1"
            assert answered.final.query_id == events[-1].final.query_id == answered.plan.query_id
            assert answered.first_token_ms > 0 and answered.total_ms >= answered.first_token_ms
            with pytest.raises(InvalidQueryError):
                [e async for e in client.ask("   ")]
            assert (await next_summary(queue)).outcome == "invalid"
            async for _ in client.ask("Tell me about boats"):
                break  # leave after the first event: the query is cancelled
            left = await next_summary(queue)
            assert left.outcome == "cancelled" and left.query == "Tell me about boats"
    finally:
        watcher.cancel()
    replayed: asyncio.Queue[dellm_pb2.QuerySummary] = asyncio.Queue()
    watcher = asyncio.create_task(watch_into(cluster.address, True, replayed))
    try:
        outcomes = [(await next_summary(replayed)).outcome for _ in range(4)]
    finally:
        watcher.cancel()
    assert outcomes == ["unavailable", "answered", "invalid", "cancelled"]  # oldest first
