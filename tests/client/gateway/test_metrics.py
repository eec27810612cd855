"""/metrics: scraped and parsed with prometheus-client's parser, and checked with `promtool check metrics`."""

from __future__ import annotations

import subprocess

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from dellm.client.api import DellmClient
from dellm.client.gateway.app import RunningGateway, start_gateway
from tests.client.gateway.conftest import RIGHT, SEED, gateway_config
from tests.client.gateway.tools import promtool
from tests.conftest import Cluster, script


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return response.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value, for every sample of every family."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(table: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str) -> float:
    return table.get((metric, frozenset(labels.items())), 0.0)


async def ask(gateway: RunningGateway, question: str) -> openai.types.chat.ChatCompletion:
    async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0) as client:
        return await client.chat.completions.create(model="dellm", messages=[{"role": "user", "content": question}])


async def test_metrics_after_queries_parse_and_pass_promtool(gateway: RunningGateway, cluster: Cluster) -> None:
    reply = await ask(gateway, SEED)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.post("/v1/chat/completions", json={
            "model": "dellm", "messages": [{"role": "user", "content": " "}]})).status_code == 400
        extras = reply.model_extra["dellm"]
        assert (await http.post("/v1/feedback", json={"query_id": extras["query_id"], "correct": True,
                                                      "feedback_token": extras["feedback_token"]})).status_code == 200
    async with DellmClient(cluster.address) as client:  # not through the gateway: counted all the same
        [e async for e in client.ask("What is 10% of 1000?")]
    board = gateway.gateway.board
    await cluster.wait_for(lambda: len(board.state()["queries"]) == 2)  # the coordinator's feed brought both
    text = await scrape(gateway.url)
    table = samples(text)
    assert value(table, "dellm_queries_total", outcome="answered") == 2
    assert value(table, "dellm_gateway_requests_total", api="openai-chat", outcome="answered") == 1
    assert value(table, "dellm_gateway_requests_in_flight") == 0  # (the blank question never reached the network)
    assert value(table, "dellm_gateway_request_seconds_count", api="openai-chat") == 1
    assert value(table, "dellm_query_seconds_count") == 2
    assert value(table, "dellm_time_to_first_token_seconds_count") == 2
    for stage in ("decompose", "dispatch+assemble", "synthesize", "reward"):
        assert value(table, "dellm_stage_seconds_count", stage=stage) == 2, stage
    assert value(table, "dellm_verdicts_total", source="exact_check", verdict="CORRECT") >= 1
    assert value(table, "dellm_verdicts_total", source="user", verdict="CORRECT") >= 1
    nodes = {dict(labels)["name"]: v for (name, labels), v in table.items() if name == "dellm_node_in_flight"}
    assert set(nodes) == {"alpha", "beta"}
    operations = {dict(labels)["operation"] for (name, labels), _ in table.items() if name == "dellm_node_fitness"}
    assert {"ALL", "MATH_OP"} <= operations
    assert value(table, "dellm_nodes", state="up") == 2 and value(table, "dellm_coordinator_up") == 1
    states = {(dict(labels)["name"], dict(labels)["state"]): v for (name, labels), v in table.items()
              if name == "dellm_node_state"}
    assert states[("alpha", "up")] == 1 and states[("alpha", "down")] == 0
    checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_retries_and_outcomes_are_counted(cluster: Cluster) -> None:
    dying = [{"pattern": ".", "reply": "one two three four", "fail_after": 1}]
    await cluster.add_node("dying1", script(dying))
    await cluster.add_node("dying2", script(dying))
    await cluster.add_node("ok", script(RIGHT, delay=0.3))
    running = await start_gateway(gateway_config(cluster))
    try:
        reply = await ask(running, "What is 10% of 1000?")
        assert "100" in (reply.choices[0].message.content or "")
        metrics = running.gateway.metrics
        await cluster.wait_for(lambda: metrics.queries.labels("answered")._value.get() == 1)
        table = samples(await scrape(running.url))
    finally:
        await running.stop()
    assert value(table, "dellm_redispatches_total", kind="retry") >= 1
    failures = value(table, "dellm_node_failures_total", node_id=f"{'dying1':0<32}", name="dying1") + value(
        table, "dellm_node_failures_total", node_id=f"{'dying2':0<32}", name="dying2")
    assert failures >= 1
    assert value(table, "dellm_verdicts_total", source="failure", verdict="WRONG") >= 1
