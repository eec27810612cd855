"""The OpenAI-compatible API, driven by the real ``openai`` SDK against a real coordinator and scripted nodes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from dellm.client.gateway.app import RunningGateway
from tests.client.gateway.conftest import SEED
from tests.conftest import Cluster


def sdk(gateway: RunningGateway, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


async def test_chat_completion_plain_carries_answer_and_dellm_extras(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        reply = await client.chat.completions.create(
            model="dellm", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": SEED}])
    assert reply.object == "chat.completion" and reply.model == "dellm"
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert "100" in choice.message.content and "savings" in choice.message.content.lower()
    extras = reply.model_extra["dellm"]  # standard clients ignore it; it is there for those who look
    assert reply.id == f"chatcmpl-{extras['query_id']}"
    assert [c["operation"] for c in extras["plan"]] == ["MATH_OP", "SEARCH_OP"]
    assert {c["chunk_id"] for c in extras["chunks"]} == {"c1", "c2"}
    assert all(c["winner_name"] in ("alpha", "beta") for c in extras["chunks"])
    assert any(v["verdict"] == "CORRECT" and v["source"] == "exact_check" for v in extras["verdicts"])
    assert {"decompose", "synthesize"} <= set(extras["timings_ms"])
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


async def test_chat_completion_streams_deltas_then_done(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        stream = await client.chat.completions.create(
            model="dellm", messages=[{"role": "user", "content": "What is 10% of 1000?"}], stream=True,
            stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "100" in text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finals) == 1 and finals[0].model_extra["dellm"]["query_id"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


async def test_raw_stream_ends_with_done(gateway: RunningGateway) -> None:
    body = {"model": "dellm", "stream": True, "messages": [{"role": "user", "content": "What is 10% of 1000?"}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


async def test_completions_plain_and_streaming(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        reply = await client.completions.create(model="dellm", prompt="What is 10% of 1000?")
        assert reply.object == "text_completion" and "100" in reply.choices[0].text
        stream = await client.completions.create(model="dellm", prompt="What is 10% of 1000?", stream=True)
        text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert "100" in text


async def test_models_lists_the_network(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        models = [m async for m in client.models.list()]
        assert [m.id for m in models] == ["dellm"]
        assert (await client.models.retrieve("dellm")).id == "dellm"
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            await client.models.retrieve("gpt-4")


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "dellm", "messages": []}, "messages"),
    ({"model": "dellm", "messages": [{"role": "user", "content": "   "}]}, "messages"),
    ({"model": "dellm", "messages": [{"role": "system", "content": "hi"}]}, "messages"),
    ({"model": "dellm", "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "dellm", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages"),
    ({"model": "dellm", "messages": [{"role": "user", "content": "x" * 20_000}]}, "messages"),
], ids=["no-messages", "blank", "no-user", "n2", "no-model", "image", "too-long"])
async def test_bad_input_is_400_in_openai_format(gateway: RunningGateway, body: dict[str, object],
                                                 param: str) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and param in (error["param"] or "")


async def test_unreadable_json_and_unknown_model(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        bad = await http.post("/v1/chat/completions", content=b"{not json",
                              headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "invalid request" in bad.json()["error"]["message"]
        unknown = await http.post("/v1/chat/completions",
                                  json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
        missing = await http.get("/v1/nothing")
        assert missing.status_code == 404 and "no route" in missing.json()["error"]["message"]


async def test_sdk_raises_bad_request_for_bad_input(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        with pytest.raises(openai.BadRequestError, match="n must be 1"):
            await client.chat.completions.create(model="dellm", messages=[{"role": "user", "content": "hi"}], n=3)


async def test_no_node_is_503(cluster: Cluster) -> None:
    from dellm.client.gateway.app import start_gateway
    from tests.client.gateway.conftest import gateway_config

    running = await start_gateway(gateway_config(cluster))
    try:
        async with sdk(running) as client:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(model="dellm", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503 and "dellm-node" in str(caught.value)
    finally:
        await running.stop()


async def test_feedback_rewards_the_winners(gateway: RunningGateway) -> None:
    async with sdk(gateway) as client:
        reply = await client.chat.completions.create(
            model="dellm", messages=[{"role": "user", "content": "Find the best savings accounts"}])
    query_id, token = reply.model_extra["dellm"]["query_id"], reply.model_extra["dellm"]["feedback_token"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        # only the asker judges a query: without the answer's feedback token the coordinator refuses
        refused = await http.post("/v1/feedback", json={"query_id": query_id, "correct": True})
        assert refused.status_code == 403 and refused.json()["error"]["param"] == "feedback_token"
        response = await http.post("/v1/feedback", json={"query_id": query_id, "correct": True,
                                                         "feedback_token": token})
        assert response.status_code == 200, response.text
        rewards = response.json()["rewards"]
        assert rewards and all(r["verdict"] == "CORRECT" and r["source"] == "user" for r in rewards)
        unknown = await http.post("/v1/feedback", json={"query_id": "nope", "correct": False})
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]["message"]
        bad = await http.post("/v1/feedback", json={"query_id": query_id, "correct": "maybe"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "correct"


async def test_an_oversized_body_is_413(gateway: RunningGateway) -> None:
    big = {"model": "dellm", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        response = await http.post("/v1/chat/completions", json=big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"model": "dellm", "messages": [{"role": "user", "content": "'
            for _ in range(40):
                yield b"x" * 65536
            yield b'"}]}'

        chunked = await http.post("/api/chat", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413 and "over" in chunked.json()["error"]
