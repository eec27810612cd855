"""Faults and bounds over real gRPC: flooding nodes are cut off, slow nodes are hedged."""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.canary import make_canary
from dellm.coordinator.config import CoordinatorConfig, DispatchConfig, RouteConfig
from dellm.coordinator.pipeline.route import quarantined
from dellm.coordinator.types import Verdict
from dellm.node.backends.base import BackendDescription, GenerationRequest, TokenPiece
from dellm.node.backends.scripted import ScriptedBackend
from dellm.protos import dellm_pb2
from tests.conftest import Cluster, script


class FloodingBackend:
    """Test double: a hostile node that ignores max_tokens and streams until it is cut off."""

    def describe(self) -> BackendDescription:
        return BackendDescription(backend="scripted", model="flood")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        while not cancel.is_set():
            yield TokenPiece("spam ", (-0.01,))
        yield TokenPiece("", finish_reason="cancelled")

    def close(self) -> None:
        return None


@pytest.fixture
async def bounded(tmp_path: Path):
    config = CoordinatorConfig(
        dispatch=DispatchConfig(max_answer_pieces=300, max_answer_bytes=4096, hedge_min_s=0.4, hedge_factor=1.0),
        route=RouteConfig(redundancy_threshold=2.0),  # one node per chunk: faults are not hidden by a second
        canary_interval_s=0,
    )
    c = Cluster(tmp_path, config)
    await c.start_coordinator()
    try:
        yield c
    finally:
        await c.close()


async def ask(address: str, query: str) -> list[dellm_pb2.AskEvent]:
    async with DellmClient(address) as client:
        return [event async for event in client.ask(query)]


async def test_a_node_that_streams_forever_is_cut_off_penalised_and_replaced(tmp_path: Path) -> None:
    config = CoordinatorConfig(dispatch=DispatchConfig(max_answer_pieces=300, max_answer_bytes=4096),
                               route=RouteConfig(redundancy_threshold=0.0), canary_interval_s=0)  # both nodes
    bounded = Cluster(tmp_path, config)
    await bounded.start_coordinator()
    try:
        await bounded.add_node("flood", FloodingBackend())
        await bounded.add_node("honest", script([{"pattern": ".", "reply": "Paris is in France.", "delay": 0.1}]))
        events = await ask(bounded.address, "Tell me about Paris")
    finally:
        await bounded.close()
    final = events[-1].final
    penalty = next(r for r in final.rewards if r.node_id.startswith("flood"))
    assert penalty.source == "failure" and penalty.reward < 0
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    assert "cut off" in next(v.error for v in result.votes if v.node_id.startswith("flood"))
    assert final.answer == "Paris is in France."


async def test_a_slow_node_is_hedged_by_the_next_one(bounded: Cluster) -> None:
    await bounded.add_node("slow", script([{"pattern": ".", "reply": "Paris " * 40, "delay": 0.25}]))
    events_task = asyncio.create_task(ask(bounded.address, "Tell me about Paris"))
    await asyncio.sleep(0.1)  # the slow node has the chunk; now a faster one joins
    await bounded.add_node("fast", script([{"pattern": ".", "reply": "Paris is in France."}]))
    events = await asyncio.wait_for(events_task, timeout=5)  # the slow answer alone would take 10 s
    hedges = [e.assignment for e in events if e.WhichOneof("event") == "assignment" and e.assignment.retry]
    assert hedges and hedges[0].reason.startswith("hedge: slow")
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    assert result.answer == "Paris is in France." and [n[:4] for n in result.cancelled_node_ids] == ["slow"]


async def test_canaries_catch_a_node_that_answers_wrongly_and_quarantine_it(cluster: Cluster) -> None:
    liar = await cluster.add_node("liar", ScriptedBackend.from_dict({"arithmetic": {"accuracy": 0.0, "seed": 1}}))
    await cluster.add_node("truth", ScriptedBackend.from_dict({"arithmetic": {"accuracy": 1.0}}))
    service = cluster.coordinator.coordinator
    liar_id = liar.servicer.info.node_id
    for _ in range(10):
        record = service.registry.get(liar_id)
        result = await service.canaries.probe(record)
        assert result.verdict is Verdict.WRONG and result.fitness_after < result.fitness_before
    assert quarantined(service.registry.get(liar_id), "MATH_OP", service.config.route)
    await cluster.wait_for(lambda: any(e.source == "canary" for e in cluster.stores["liar"].entries()))
    # arithmetic now goes to the truthful node
    for _ in range(5):
        events = await ask(cluster.address, "What is 41 * 7?")
        assert "287" in events[-1].final.answer
        assert all(r.node_id.startswith("truth") for r in events[-1].final.rewards)


async def test_a_canary_answered_with_a_right_program_is_judged_by_what_it_computes(cluster: Cluster) -> None:
    """The canary asks for a program, as a query's arithmetic does; ``answer = 59 * 9`` is right, not 9."""
    service = cluster.coordinator.coordinator
    question, expected = make_canary(random.Random(7))
    a, op, b = question.removeprefix("What is ").rstrip("?").split()
    await cluster.add_node("honest", script([{"pattern": re.escape(question),
                                              "reply": f"```python\nanswer = {a} {op} {b}\n```"}]))
    service.canaries._rng = random.Random(7)  # the same question again
    result = await service.canaries.probe(service.registry.list_nodes()[0])
    assert result.question == question and result.expected == expected
    assert result.verdict is Verdict.CORRECT and result.fitness_after > result.fitness_before


async def test_too_many_queries_at_once_are_refused_not_queued(tmp_path: Path) -> None:
    c = Cluster(tmp_path, CoordinatorConfig(max_queries=2, canary_interval_s=0))
    await c.start_coordinator()
    try:
        await c.add_node("slow", script([{"pattern": ".", "reply": "one two three", "delay": 0.3}]))
        results = await asyncio.gather(*(ask(c.address, "Tell me a story") for _ in range(4)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 2 and all("RESOURCE_EXHAUSTED" in str(r) for r in refused)
        assert len([r for r in results if not isinstance(r, Exception)]) == 2
    finally:
        await c.close()
