"""The live status page: its SSE feed, and the page itself in a real headless Chromium against a running cluster."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from dellm.client.api import DellmClient
from dellm.client.gateway.app import RunningGateway, start_gateway
from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.grpc_server import CoordinatorServicer
from dellm.protos import dellm_pb2
from scripts.chromium_page import ChromiumPage
from tests.client.gateway.conftest import RIGHT, SEED, gateway_config
from tests.client.gateway.tools import chromium
from tests.conftest import Cluster, script


async def ask(gateway: RunningGateway, question: str) -> str:
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0) as client:
        reply = await client.chat.completions.create(model="dellm", messages=[{"role": "user", "content": question}])
    return str(reply.model_extra["dellm"]["query_id"])


async def sse_events(response: httpx.Response) -> asyncio.Queue[tuple[str, dict[str, object]]]:
    queue: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()

    async def read() -> None:
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                await queue.put((kind, json.loads(line.removeprefix("data:").strip())))

    asyncio.get_running_loop().create_task(read())
    return queue


async def test_status_feed_sends_state_then_each_query_live(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        async with http.stream("GET", "/status/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            queue = await sse_events(response)
            kind, state = await asyncio.wait_for(queue.get(), 10)
            assert kind == "state" and state["queries"] == [] and state["history_size"] == 50
            query_id = await ask(gateway, SEED)
            while True:
                kind, data = await asyncio.wait_for(queue.get(), 10)
                if kind == "query":
                    break
            assert data["query_id"] == query_id and data["outcome"] == "answered" and data["query"] == SEED
            assert [c["operation"] for c in data["plan"]] == ["MATH_OP", "SEARCH_OP"]  # type: ignore[index]
            assert {w["name"] for w in data["winners"]} <= {"alpha", "beta"}  # type: ignore[union-attr]
            assert any(v["verdict"] == "CORRECT" for v in data["verdicts"])  # type: ignore[union-attr]
            kind, nodes = await asyncio.wait_for(queue.get(), 10)
            while kind != "nodes":
                kind, nodes = await asyncio.wait_for(queue.get(), 10)
            rows = {n["name"]: n for n in nodes["nodes"]}  # type: ignore[union-attr]
            assert set(rows) == {"alpha", "beta"} and "MATH_OP" in str(rows)
        state = (await http.get("/status/state")).json()
    assert state["queries"][0]["query_id"] == query_id
    assert set(state["fitness"]) == {n["node_id"] for n in state["nodes"]}


async def test_history_keeps_the_last_fifty(gateway: RunningGateway) -> None:
    board = gateway.gateway.board
    for i in range(60):
        board._add(dellm_pb2.QuerySummary(query=f"q{i}", client="c", outcome="answered", started_unix=float(i)))
    queries = board.state()["queries"]
    assert len(queries) == 50 and queries[0]["query"] == "q59" and queries[-1]["query"] == "q10"


async def test_queries_from_any_client_reach_the_page(gateway: RunningGateway, cluster: Cluster) -> None:
    """`dellm ask` (here its client library) is not the gateway: its query still shows, by the coordinator's feed."""
    async with DellmClient(cluster.address) as client:
        events = [e async for e in client.ask("What is 10% of 1000?")]
    query_id = events[-1].final.query_id
    board = gateway.gateway.board
    await cluster.wait_for(lambda: any(q["query_id"] == query_id for q in board.state()["queries"]))
    row = next(q for q in board.state()["queries"] if q["query_id"] == query_id)
    assert row["outcome"] == "answered" and row["client"] == "127.0.0.1" and row["winners"][0]["name"] in (
        "alpha", "beta")
    assert board.watching


async def test_an_older_coordinator_without_watch_shows_the_gateways_queries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unimplemented(self: object, request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    monkeypatch.setattr(CoordinatorServicer, "Watch", unimplemented)  # before the server registers it
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0))
    await cluster.start_coordinator()
    try:
        await cluster.add_node("alpha", script(RIGHT))
        running = await start_gateway(gateway_config(cluster))
        try:
            await cluster.wait_for(lambda: not running.gateway.board.watching)
            query_id = await ask(running, "What is 10% of 1000?")
            rows = running.gateway.board.state()["queries"]
            assert [q["query_id"] for q in rows] == [query_id] and rows[0]["client"] == "this gateway"
        finally:
            await running.stop()
    finally:
        await cluster.close()


async def test_page_in_headless_chromium_shows_nodes_and_queries_live(gateway: RunningGateway,
                                                                      tmp_path: Path) -> None:
    """Load the page in a real Chromium, see the nodes and a past query, ask another and see it arrive by SSE,
    and keep a screenshot (its path is printed; under tmp_path)."""
    browser = chromium()
    first = await ask(gateway, SEED)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        page = (await http.get("/")).text
    assert "<script src" not in page and "<link" not in page  # self-contained: nothing from a CDN
    with ChromiumPage(browser, tmp_path / "chromium-profile") as chrome:
        await asyncio.to_thread(chrome.open, gateway.url + "/")
        await asyncio.to_thread(chrome.wait_for, f"!!document.querySelector('tr[data-query-id=\"{first}\"]')")
        names = await asyncio.to_thread(chrome.wait_for, "document.querySelectorAll('#nodes-body tr[data-node-id]')"
                                                         ".length === 2 && [...document.querySelectorAll("
                                                         "'#nodes-body tr td:first-child')].map(td => td.textContent)")
        assert sorted(names) == ["alpha", "beta"]
        head = await asyncio.to_thread(chrome.evaluate, "document.getElementById('nodes-head').textContent")
        assert "MATH_OP" in head and "fitness" in head
        assert await asyncio.to_thread(chrome.evaluate, "document.getElementById('conn').textContent") == "live"
        second = await ask(gateway, "What is 10% of 1000?")  # the page is open: this one comes by SSE
        row = await asyncio.to_thread(
            chrome.wait_for, f"document.querySelector('tr[data-query-id=\"{second}\"]')?.textContent")
        assert "What is 10% of 1000?" in row and "answered" in row and "CORRECT" in row
        await asyncio.to_thread(chrome.wait_for, "document.querySelectorAll('#plot polyline').length === 2")
        screenshot = await asyncio.to_thread(chrome.screenshot, tmp_path / "status-page.png")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    print(f"status page screenshot: {screenshot}")
