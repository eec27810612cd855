"""401 without the cluster token, 429 when the coordinator is full, 503 without a coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from dellm.client.gateway.app import start_gateway
from dellm.coordinator.config import CoordinatorConfig
from dellm.protos.security import SecurityConfig
from tests.client.gateway.conftest import RIGHT, gateway_config
from tests.conftest import Cluster, script

TOKEN = "s3cret-cluster-token-for-tests"


async def test_bearer_token_is_the_cluster_token(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0), security=SecurityConfig(token=TOKEN))
    await cluster.start_coordinator()
    try:
        await cluster.add_node("alpha", script(RIGHT))
        running = await start_gateway(gateway_config(cluster, api_token=TOKEN))
        try:
            messages = [{"role": "user", "content": "What is 10% of 1000?"}]
            async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="wrong", max_retries=0) as bad:
                with pytest.raises(openai.AuthenticationError, match="not this cluster's token"):
                    await bad.chat.completions.create(model="dellm", messages=messages)
            async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key=TOKEN, max_retries=0) as good:
                reply = await good.chat.completions.create(model="dellm", messages=messages)
            assert "100" in (reply.choices[0].message.content or "")
            reply2 = await ollama.AsyncClient(host=running.url, headers={"Authorization": f"Bearer {TOKEN}"}).chat(
                model="dellm", messages=messages)
            assert "100" in reply2.message.content
            async with httpx.AsyncClient(base_url=running.url) as http:
                for path in ("/v1/models", "/api/tags", "/metrics", "/status/state", "/"):
                    response = await http.get(path)
                    assert response.status_code == 401, path
                    assert response.headers["www-authenticate"] == "Bearer"
                ollama_error = (await http.post("/api/chat", json={"model": "dellm", "messages": messages})).json()
                assert "cluster token" in ollama_error["error"]
                assert (await http.get("/status/state", params={"token": TOKEN})).status_code == 200
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await running.stop()
    finally:
        await cluster.close()


async def test_coordinator_full_is_429(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0, max_queries=1, max_queries_per_client=1))
    await cluster.start_coordinator()
    try:
        await cluster.add_node("slow", script([], default="Answer: 7", delay=0.5))
        running = await start_gateway(gateway_config(cluster))
        try:
            async with openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0) as client:
                first = asyncio.create_task(client.chat.completions.create(
                    model="dellm", messages=[{"role": "user", "content": "Tell me about sailing boats"}]))
                pool = cluster.coordinator.coordinator.pool  # type: ignore[union-attr]
                await cluster.wait_for(lambda: sum(pool.in_flight.values()) >= 1)  # the first is being answered
                with pytest.raises(openai.RateLimitError, match="queries"):
                    await client.chat.completions.create(
                        model="dellm", messages=[{"role": "user", "content": "Tell me about rowing boats"}])
                assert (await first).choices[0].message.content
        finally:
            await running.stop()
    finally:
        await cluster.close()


async def test_no_coordinator_is_503(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0))
    await cluster.start_coordinator()
    address = cluster.address
    await cluster.close()  # nobody answers there any more
    from dataclasses import replace

    running = await start_gateway(replace(gateway_config(cluster), coordinator=address))
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            response = await http.post("/v1/chat/completions",
                                       json={"model": "dellm", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503
        assert "no coordinator answering" in response.json()["error"]["message"]
    finally:
        await running.stop()
