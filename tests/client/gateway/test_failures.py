"""Queries that fail after they started, and clients that leave: the HTTP answer, the stream's end, the metrics."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from dellm.client.gateway.app import start_gateway
from tests.client.gateway.conftest import gateway_config
from tests.conftest import Cluster, script

DYING = [{"pattern": ".", "reply": "one two three four", "fail_after": 1}]
MESSAGES = [{"role": "user", "content": "What is 10% of 1000?"}]


async def test_a_query_failing_midway_is_503_or_an_error_event(cluster: Cluster) -> None:
    await cluster.add_node("dying", script(DYING))
    running = await start_gateway(gateway_config(cluster))
    try:
        async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError) as plain:
                await client.chat.completions.create(model="dellm", messages=MESSAGES)
            assert plain.value.status_code == 503 and "failed" in str(plain.value)
            stream = await client.chat.completions.create(model="dellm", messages=MESSAGES, stream=True)
            with pytest.raises(openai.APIError, match="failed"):
                _ = [chunk async for chunk in stream]
        body = {"model": "dellm", "stream": True, "messages": MESSAGES}
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http, \
                http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200  # the stream had begun: the failure comes inside it
            lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
        assert lines[-1] == "data: [DONE]"
        error = json.loads(lines[-2].removeprefix("data: "))["error"]
        assert error["type"] == "service_unavailable" and error["message"]
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            lines = [json.loads(line) for line in (await http.post(
                "/api/chat", json={"model": "dellm", "messages": MESSAGES})).text.splitlines()]
        assert "UNAVAILABLE" in lines[-1]["error"]  # midway, or at once once the node is marked down
        requests = running.gateway.metrics.requests
        assert requests.labels("openai-chat", "unavailable")._value.get() == 3
        assert requests.labels("ollama-chat", "unavailable")._value.get() == 1
        await cluster.wait_for(lambda: running.gateway.metrics.queries.labels("unavailable")._value.get() == 4)
    finally:
        await running.stop()


async def test_a_client_leaving_midstream_cancels_the_query(cluster: Cluster) -> None:
    await cluster.add_node("slow", script([], default="Answer: 7 " + "word " * 40, delay=0.1))
    running = await start_gateway(gateway_config(cluster))
    assert cluster.coordinator is not None
    pool = cluster.coordinator.coordinator.pool
    try:
        body = {"model": "dellm", "stream": True, "messages": [{"role": "user", "content": "Tell me about boats"}]}
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http, \
                http.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # the first chunk came: leave
            await cluster.wait_for(lambda: sum(pool.in_flight.values()) == 1)
        metrics = running.gateway.metrics
        await cluster.wait_for(lambda: metrics.requests.labels("openai-chat", "cancelled")._value.get() == 1)
        await cluster.wait_for(lambda: metrics.queries.labels("cancelled")._value.get() == 1)  # the coordinator's
        await cluster.wait_for(lambda: sum(pool.in_flight.values()) == 0, timeout=3)  # the node stream stopped
        assert running.gateway.metrics.in_flight._value.get() == 0
        assert running.gateway.board.state()["queries"][0]["outcome"] == "cancelled"
    finally:
        await running.stop()
    await asyncio.sleep(0)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_a_client_gone_before_reading_is_counted_and_its_query_ends(cluster: Cluster, path: str) -> None:
    await cluster.add_node("slow", script([], default="Answer: 7 " + "word " * 40, delay=0.1))
    running = await start_gateway(gateway_config(cluster))
    assert cluster.coordinator is not None
    pool = cluster.coordinator.coordinator.pool
    try:
        body = {"model": "dellm", "stream": True, "messages": [{"role": "user", "content": "Tell me about boats"}]}
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http, \
                http.stream("POST", path, json=body) as response:
            assert response.status_code == 200  # headers only: then gone
        metrics = running.gateway.metrics
        await cluster.wait_for(lambda: metrics.in_flight._value.get() == 0)
        await cluster.wait_for(lambda: sum(pool.in_flight.values()) == 0, timeout=3)
        api = "openai-chat" if path.startswith("/v1") else "ollama-chat"
        assert metrics.requests.labels(api, "cancelled")._value.get() == 1
    finally:
        await running.stop()
