"""Warming an admitted node's prompt cache before it gets work (coordinator/warmup.py): an in-process
coordinator and scripted test-double nodes over real gRPC; a recording wrapper shows what each node was asked."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import AdmissionConfig, CoordinatorConfig
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import REASONING_SYSTEM, operation_system_prompt
from dellm.coordinator.warmup import warm_system_prompts
from dellm.node.backends.base import BackendDescription, GenerationRequest, TokenPiece
from dellm.node.backends.scripted import ScriptedBackend
from tests.conftest import Cluster, script

CAPITAL = {"pattern": "(?i)capital of japan", "reply": "Tokyo"}


class Recording:
    """A test double around a scripted backend: it records the system prompt and prompt of every request."""

    def __init__(self, inner: ScriptedBackend) -> None:
        self.inner = inner
        self.seen: list[tuple[str, str, int]] = []

    def describe(self) -> BackendDescription:
        return self.inner.describe()

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        self.seen.append((request.system, request.prompt, request.max_tokens))
        yield from self.inner.generate(request, cancel)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
async def warming(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0, admission=AdmissionConfig(warm_budget_s=2.0)))
    await c.start_coordinator()
    try:
        yield c
    finally:
        await c.close()


async def test_an_admitted_node_is_asked_one_token_under_each_system_prompt_before_it_gets_work(
        warming: Cluster) -> None:
    backend = Recording(script([CAPITAL]))
    await warming.add_node("a", backend)  # waits until the node is up
    prompts = warm_system_prompts(warming.config.dispatch)
    dispatch = warming.config.dispatch
    assert len(prompts) == 7 and prompts[0] == operation_system_prompt(Operation.GENERAL_OP, dispatch)
    assert {dispatch.expression_system_prompt, dispatch.program_system_prompt, REASONING_SYSTEM} < set(prompts)
    assert [(system, tokens) for system, _, tokens in backend.seen] == [(p, 1) for p in prompts]
    async with DellmClient(warming.address) as client:
        events = [event async for event in client.ask("Name the capital of Japan")]
    assert "Tokyo" in events[-1].final.answer
    assert len(backend.seen) == len(prompts) + 1  # the warm-up, then the query's one chunk
    assert backend.seen[-1][1] != backend.seen[0][1]


async def test_warming_is_never_a_reason_to_refuse_a_node(warming: Cluster) -> None:
    failing = Recording(script([CAPITAL, {"pattern": "(?i)reply with ok", "reply": "O K", "fail_after": 1}]))
    await warming.add_node("a", failing)
    assert len(failing.seen) == 1  # the first warm-up request failed, and the warm-up stopped there
    registry = warming.coordinator.coordinator.registry if warming.coordinator else None
    assert registry is not None and [n.state for n in registry.list_nodes()] == ["up"]


async def test_a_slow_node_s_warm_up_stops_at_its_budget(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0, admission=AdmissionConfig(warm_budget_s=0.3)))
    await cluster.start_coordinator()
    try:
        slow = Recording(script([CAPITAL, {"pattern": "(?i)reply with ok", "reply": "OK", "delay": 1.0}]))
        started = time.perf_counter()
        await cluster.add_node("a", slow)
        assert time.perf_counter() - started < 1.5  # admitted once the budget was spent, not after 7 x 1 s
        assert len(slow.seen) == 1
    finally:
        await cluster.close()


async def test_a_node_already_up_is_not_warmed_again_when_it_is_admitted_again(warming: Cluster) -> None:
    """A heartbeat Join (or mDNS seeing the node again) admits a node that is up: no second warm-up."""
    backend = Recording(script([CAPITAL]))
    node = await warming.add_node("a", backend)
    assert warming.coordinator is not None
    await warming.coordinator.coordinator.admit(node.address)
    assert len(backend.seen) == len(warm_system_prompts(warming.config.dispatch))


class Paced(Recording):
    """A test double that takes 1 ms per character of its system prompt, as a CPU evaluating a prompt does."""

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        time.sleep(len(request.system or "") / 1000)
        yield from super().generate(request, cancel)


async def test_a_prompt_the_node_could_not_finish_in_the_budget_is_not_started(tmp_path: Path) -> None:
    """At its pace on the first prompts, the one-line-code prompt's examples (~1,000 characters) would outlast
    the ~0.35 s left: it is skipped, so the node is not still evaluating it when it gets its first work; the
    shorter prompts after it are warmed."""
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0, admission=AdmissionConfig(warm_budget_s=0.6)))
    await cluster.start_coordinator()
    try:
        paced = Paced(script([CAPITAL]))
        await cluster.add_node("a", paced)
        dispatch = cluster.config.dispatch
        systems = [system for system, _, _ in paced.seen]
        order = warm_system_prompts(dispatch)
        assert dispatch.expression_system_prompt not in systems
        assert dispatch.program_system_prompt in systems  # the shorter prompt after it is warmed
        assert systems == sorted(systems, key=order.index)  # in their order, none twice
    finally:
        await cluster.close()
