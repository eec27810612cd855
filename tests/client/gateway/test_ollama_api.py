"""The Ollama-compatible API, driven by the real ``ollama`` client against a real coordinator and scripted nodes."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from dellm.client.gateway.app import RunningGateway
from tests.client.gateway.conftest import SEED


def client(gateway: RunningGateway) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=gateway.url, timeout=30)


async def test_chat_plain(gateway: RunningGateway) -> None:
    reply = await client(gateway).chat(model="dellm", messages=[{"role": "user", "content": SEED}])
    assert reply.done and reply.done_reason == "stop" and reply.message.role == "assistant"
    assert "100" in reply.message.content and "savings" in reply.message.content.lower()
    assert reply.total_duration and reply.total_duration > 0
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:  # the extras, which the client drops
        raw = (await http.post("/api/chat", json={"model": "dellm", "stream": False,
                                                  "messages": [{"role": "user", "content": SEED}]})).json()
    assert [c["operation"] for c in raw["dellm"]["plan"]] == ["MATH_OP", "SEARCH_OP"]


async def test_chat_streams_ndjson(gateway: RunningGateway) -> None:
    parts = [part async for part in await client(gateway).chat(
        model="dellm:latest", messages=[{"role": "user", "content": "What is 10% of 1000?"}], stream=True)]
    assert parts[-1].done and all(not p.done for p in parts[:-1])
    assert "100" in "".join(p.message.content or "" for p in parts)


async def test_generate_plain_and_streaming(gateway: RunningGateway) -> None:
    reply = await client(gateway).generate(model="dellm", prompt="What is 10% of 1000?", stream=False)
    assert reply.done and "100" in reply.response
    parts = [p async for p in await client(gateway).generate(model="dellm", prompt="What is 10% of 1000?",
                                                             stream=True)]
    assert parts[-1].done and "100" in "".join(p.response for p in parts)


async def test_generate_raw_lines_are_ndjson(gateway: RunningGateway) -> None:
    body = {"model": "dellm", "prompt": "What is 10% of 1000?"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http, \
            http.stream("POST", "/api/generate", json=body) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) async for line in r.aiter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["dellm"]["query_id"]
    # an empty prompt is Ollama's "load the model": the network is always loaded
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        load = (await http.post("/api/generate", json={"model": "dellm"})).json()
    assert load["done"] is True and load["done_reason"] == "load"


async def test_tags_and_version(gateway: RunningGateway) -> None:
    tags = await client(gateway).list()
    assert [m.model for m in tags.models] == ["dellm:latest"]
    assert tags.models[0].details is not None and tags.models[0].details.families == ["scripted"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/api/version")).json()["version"]


async def test_errors_are_ollama_shaped(gateway: RunningGateway) -> None:
    with pytest.raises(ollama.ResponseError) as unknown:
        await client(gateway).chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.status_code == 404 and "does not exist" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as no_user:
        await client(gateway).chat(model="dellm", messages=[{"role": "assistant", "content": "hi"}])
    assert no_user.value.status_code == 400 and "no user message" in no_user.value.error
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        bad = await http.post("/api/chat", json={"model": "dellm", "messages": "hello"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("invalid request: messages")
