"""Admission over real gRPC: Join limits per peer address, the node bound, probation, pruning with an archive.

Before: one process admitted 1000 node ids in 3.1 s, they took 20 of the next 20 queries and cost 1000
health checks a second, and nodes were never removed (1001 listed after a restart).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import AdmissionConfig, CoordinatorConfig, HealthConfig
from dellm.node.backends.scripted import ScriptedBackend
from dellm.node.daemon import SERVICE_NAME
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, channel, new_server, set_serving
from dellm.protos.wire import PROTOCOL_VERSION, NodeState
from tests.conftest import Cluster, script

RIGHT = [{"pattern": ".", "reply": "Paris is the capital of France."}]


class Fake(dellm_pb2_grpc.NodeServiceServicer):
    """Test double: a flood node. It answers Info (so it is admitted) and Generate with a wrong answer."""

    def __init__(self, info: dellm_pb2.NodeInfo) -> None:
        self.info = info
        self.generated = 0

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info

    async def Generate(self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        self.generated += 1
        yield dellm_pb2.TokenChunk(text="Bananas grow on trees. The answer is 7.")
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)


async def flood(count: int) -> tuple[list[grpc.aio.Server], list[Fake]]:
    servers, fakes = [], []
    for i in range(count):
        server = new_server()
        fake = Fake(dellm_pb2.NodeInfo(node_id=f"flood{i:03d}".ljust(32, "0"), name=f"flood{i}", model="flood",
                                       backend="scripted", protocol_version=PROTOCOL_VERSION, cluster="default"))
        fake.info.address = bind(server, "127.0.0.1:0")
        dellm_pb2_grpc.add_NodeServiceServicer_to_server(fake, server)
        await set_serving(add_health_and_reflection(server, [SERVICE_NAME]), [SERVICE_NAME], True)
        await server.start()
        servers.append(server)
        fakes.append(fake)
    return servers, fakes


async def join_all(address: str, fakes: list[Fake]) -> list[grpc.StatusCode]:
    codes = []
    async with channel(address) as ch:
        stub = dellm_pb2_grpc.CoordinatorServiceStub(ch)
        for fake in fakes:
            try:
                await stub.Join(dellm_pb2.JoinRequest(info=fake.info, node_secret="s" * 43), timeout=5)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
                assert exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "too many" in (exc.details() or "") \
                    or "limit" in (exc.details() or "")
    return codes


async def limited_cluster(tmp_path: Path, admission: AdmissionConfig, **config: object) -> Cluster:
    c = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0, admission=admission, **config))  # type: ignore[arg-type]
    await c.start_coordinator()
    return c


async def test_a_join_flood_from_one_address_gets_a_few_ids_in(tmp_path: Path) -> None:
    c = await limited_cluster(tmp_path, AdmissionConfig(new_ids_burst=5, new_ids_per_min=1.0))
    servers, fakes = await flood(12)
    try:
        codes = await join_all(c.address, fakes)
        assert codes.count(grpc.StatusCode.OK) == 5
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 7
        assert len(c.coordinator.coordinator.registry.list_nodes()) == 5  # type: ignore[union-attr]
        # the admitted ones' heartbeats are not new ids: they still pass
        assert await join_all(c.address, fakes[:5]) == [grpc.StatusCode.OK] * 5
    finally:
        for server in servers:
            await server.stop(None)
        await c.close()


async def test_join_calls_per_address_and_the_node_bound(tmp_path: Path) -> None:
    c = await limited_cluster(tmp_path, AdmissionConfig(max_nodes=3, joins_per_s=0.1, join_burst=6))
    servers, fakes = await flood(4)
    try:
        codes = await join_all(c.address, fakes)
        assert codes[:3] == [grpc.StatusCode.OK] * 3 and codes[3] == grpc.StatusCode.RESOURCE_EXHAUSTED
        codes = await join_all(c.address, fakes[:3])  # 7 calls in all: past the burst of 6
        assert codes[:2] == [grpc.StatusCode.OK] * 2 and codes[2] == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for server in servers:
            await server.stop(None)
        await c.close()


async def test_new_nodes_answer_canaries_before_they_get_work(tmp_path: Path) -> None:
    c = await limited_cluster(tmp_path, AdmissionConfig(probation_canaries=2, probation_interval_s=0.2))
    servers, fakes = await flood(3)
    try:
        good = ScriptedBackend.from_dict({"model": "good", "rule": [{**RIGHT[0], "pattern": "(?i)paris"}],
                                          "arithmetic": {"accuracy": 1.0},
                                          "default": {"reply": "I do not know."}})
        node = await c.add_node("good", good, coordinator=c.address)  # not waited for: it starts on probation
        registry = c.coordinator.coordinator.registry  # type: ignore[union-attr]
        assert await join_all(c.address, fakes) == [grpc.StatusCode.OK] * 3
        node_id = node.servicer.info.node_id
        await c.wait_for(lambda: any(n.node_id == node_id for n in registry.list_nodes()))
        await c.wait_for(lambda: registry.get(node_id).state == NodeState.UP)
        assert registry.get(node_id).correct >= 2
        async with DellmClient(c.address) as client:
            for _ in range(5):
                events = [e async for e in client.ask("Tell me about Paris")]
                assert events[-1].final.answer == "Paris is the capital of France."
        floods = [registry.get(f.info.node_id) for f in fakes]
        assert all(f.state == NodeState.PROBATION for f in floods)
        assert all(f.fitness < 0.5 for f in floods)  # their canaries were wrong
        generated_by_flood = sum(f.generated for f in fakes)
        canaries = sum(s.trials for f in floods for s in f.op_stats.values())
        assert generated_by_flood - canaries <= len(fakes)  # every call to them was a canary (some in flight)
    finally:
        for server in servers:
            await server.stop(None)
        await c.close()


async def test_a_node_gone_past_the_retention_is_pruned_and_gets_its_fitness_back(tmp_path: Path) -> None:
    fast = HealthConfig(interval_s=0.05, timeout_s=0.2, max_missed=1, ttl_s=0.1)
    c = await limited_cluster(tmp_path, AdmissionConfig(retention_s=0.2), health=fast)
    try:
        node = await c.add_node("a", script(RIGHT))
        node_id = node.servicer.info.node_id
        registry = c.coordinator.coordinator.registry  # type: ignore[union-attr]
        registry.apply_reward(node_id, 0.05, True, lambda f: 0.83, "SEARCH_OP")
        await c.stop_node("a")
        await c.wait_for(lambda: all(n.node_id != node_id for n in registry.list_nodes()))
        async with DellmClient(c.address) as client:
            assert all(n.info.node_id != node_id for n in await client.nodes())
        await c.add_node("a", script(RIGHT))  # the same state folder: the same id and secret
        record = registry.get(node_id)
        assert record.fitness == pytest.approx(0.83) and record.op_stats["SEARCH_OP"].trials == 1
    finally:
        await c.close()
