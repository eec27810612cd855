"""Several coordinators on one Redis registry share membership and fitness, and lose no update."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.core import Coordinator
from dellm.coordinator.grpc_server import start_coordinator
from dellm.coordinator.pipeline.synthesize import TemplateSynthesizer
from dellm.coordinator.registry import RedisRegistry
from dellm.node.config import NodeConfig
from dellm.node.daemon import node_info, start_node
from dellm.node.state import FeedbackStore
from tests.conftest import script

RIGHT = [{"pattern": ".", "reply": "10% of 1000 is 100. Answer: 100"}]


async def test_two_coordinators_share_nodes_and_fitness(redis_url: str, tmp_path: Path) -> None:
    coordinators = [
        await start_coordinator(Coordinator(CoordinatorConfig(), RedisRegistry(redis_url), TemplateSynthesizer()),
                                "127.0.0.1:0")
        for _ in range(2)
    ]
    stores = [FeedbackStore(tmp_path / f"n{i}.sqlite3") for i in range(2)]
    nodes = []
    try:
        # each node joins a different coordinator; both coordinators see both nodes
        for i, (running, store) in enumerate(zip(coordinators, stores, strict=True)):
            backend = script(RIGHT)
            nodes.append(await start_node(backend, node_info(f"{i:032d}", f"n{i}", backend), store,
                                          NodeConfig(listen="127.0.0.1:0", coordinator=running.address,
                                                     state_dir=tmp_path)))
        for running in coordinators:
            async with DellmClient(running.address) as client:
                for _ in range(100):
                    if sum(n.state == "up" for n in await client.nodes()) == 2:
                        break
                    await asyncio.sleep(0.05)
                assert {n.info.name for n in await client.nodes() if n.state == "up"} == {"n0", "n1"}

        async def ask(address: str) -> int:
            async with DellmClient(address) as client:
                events = [event async for event in client.ask("What is 10% of 1000?")]
            return len(events[-1].final.rewards)  # one per finished answer (a settled chunk cancels the rest)

        # 6 queries through each coordinator at once: every answer and reward lands on one shared record
        rewarded = sum(await asyncio.gather(*(ask(running.address) for running in coordinators for _ in range(6))))
        records = RedisRegistry(redis_url).list_nodes()
        assert rewarded >= 12
        assert sum(r.answers for r in records) == rewarded
        assert sum(r.correct for r in records) == rewarded
        assert all(r.fitness >= 0.5 for r in records) and max(r.fitness for r in records) > 0.5
        async with DellmClient(coordinators[1].address) as client:
            seen = {n.info.node_id: n.fitness for n in await client.nodes()}
        assert seen == pytest.approx({r.node_id: r.fitness for r in records}, abs=1e-6)  # float32 on the wire
    finally:
        for node in nodes:
            await node.stop(0)
        for running in coordinators:
            await running.stop(0)
        for store in stores:
            store.close()
