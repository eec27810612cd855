"""Membership without mDNS: Join, static lists, health checks, eviction and return."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from dellm.coordinator.config import CoordinatorConfig, HealthConfig
from dellm.coordinator.core import Coordinator
from dellm.coordinator.discovery.static import StaticDiscovery
from dellm.coordinator.errors import AdmissionRejectedError, NotOwnerError
from dellm.coordinator.grpc_server import start_coordinator
from dellm.coordinator.pipeline.synthesize import TemplateSynthesizer
from dellm.coordinator.registry import SqliteRegistry
from dellm.node.config import NodeConfig
from dellm.node.daemon import node_info, start_node
from dellm.node.state import FeedbackStore
from dellm.protos.wire import NodeDescription, description_from_proto
from tests.conftest import Cluster, script

FAST = HealthConfig(interval_s=0.1, timeout_s=0.2, max_missed=2, ttl_s=0.6, last_seen_write_s=0.1)
REPLY = [{"pattern": ".", "reply": "ok then"}]


@pytest.fixture
async def fast(tmp_path: Path):
    c = Cluster(tmp_path, CoordinatorConfig(health=FAST, canary_interval_s=0))
    await c.start_coordinator()
    try:
        yield c
    finally:
        await c.close()


def state(cluster: Cluster, node_id: str) -> str:
    return cluster.coordinator.coordinator.registry.get(node_id).state


async def test_a_dead_node_goes_down_then_gone_and_returns_with_its_fitness(fast: Cluster) -> None:
    node = await fast.add_node("a", script(REPLY))
    node_id = node.servicer.info.node_id
    registry = fast.coordinator.coordinator.registry
    registry.apply_reward(node_id, 0.1, True, lambda f: 0.8)
    await fast.stop_node("a")
    await fast.wait_for(lambda: state(fast, node_id) == "down", timeout=3)
    await fast.wait_for(lambda: state(fast, node_id) == "gone", timeout=5)
    assert registry.get(node_id).fitness == pytest.approx(0.8)  # kept while gone
    await fast.add_node("a", script(REPLY))  # same id, new port: rejoins
    assert state(fast, node_id) == "up" and registry.get(node_id).fitness == pytest.approx(0.8)


async def test_a_node_that_answers_again_is_brought_back_up(fast: Cluster) -> None:
    node = await fast.add_node("a", script(REPLY))
    node_id = node.servicer.info.node_id
    fast.coordinator.coordinator.registry.set_state(node_id, "down")  # e.g. after a failed stream
    await fast.wait_for(lambda: state(fast, node_id) == "up", timeout=2)


async def test_static_discovery_admits_a_node_that_starts_later(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    backend = script(REPLY)
    node = await start_node(backend, node_info("s" * 32, "static", backend), store,
                            NodeConfig(listen="127.0.0.1:0", state_dir=tmp_path))
    port = node.address.rsplit(":", 1)[1]
    await node.stop(0)
    registry = SqliteRegistry(tmp_path / "reg.sqlite3")
    coordinator = Coordinator(CoordinatorConfig(health=FAST), registry, TemplateSynthesizer(),
                              [StaticDiscovery([f"127.0.0.1:{port}"], interval=0.1)])
    running = await start_coordinator(coordinator, "127.0.0.1:0")
    try:
        await asyncio.sleep(0.3)
        assert registry.list_nodes() == []  # nothing listening yet
        node = await start_node(backend, node_info("s" * 32, "static", backend), store,
                                NodeConfig(listen=f"127.0.0.1:{port}", state_dir=tmp_path))
        for _ in range(50):
            if registry.list_nodes():
                break
            await asyncio.sleep(0.05)
        (record,) = registry.list_nodes()
        assert record.node_id == "s" * 32 and record.state == "up"
        await node.stop(0)
    finally:
        await running.stop(0)
        store.close()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"node_id": "x" * 32}, "node_id"),
        ({"model": "some-other-model"}, "model"),
        ({"backend": "llama_cpp"}, "backend"),
    ],
    ids=["other-id", "other-model", "other-backend"],
)
async def test_a_claim_that_info_contradicts_is_refused(cluster: Cluster, change: dict[str, str], reason: str) -> None:
    node = await cluster.add_node("a", script(REPLY), join=False)
    claim = replace(NodeDescription(node_id=node.servicer.info.node_id, address=node.address, model="scripted",
                                    backend="scripted"), **change)
    with pytest.raises(AdmissionRejectedError, match=f"does not match what it claimed: {reason}"):
        await cluster.coordinator.coordinator.admit(node.address, claim)


async def test_another_cluster_and_another_protocol_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    for field, value, reason in (("cluster", "other", "cluster 'other'"), ("protocol_version", 7, "protocol 7")):
        backend = script(REPLY)
        info = node_info(f"{field:0<32}"[:32], field, backend)
        setattr(info, field, value)
        store = FeedbackStore(tmp_path / f"{field}.sqlite3")
        node = await start_node(backend, info, store, NodeConfig(listen="127.0.0.1:0", state_dir=tmp_path))
        try:
            with pytest.raises(AdmissionRejectedError, match=reason):
                await cluster.coordinator.coordinator.admit(node.address)
        finally:
            await node.stop(0)
            store.close()


async def test_a_duplicate_node_id_from_another_live_address_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    first = await cluster.add_node("a", script(REPLY))
    backend = script(REPLY)
    twin_store = FeedbackStore(tmp_path / "twin.sqlite3")
    twin = await start_node(backend, node_info(first.servicer.info.node_id, "twin", backend), twin_store,
                            NodeConfig(listen="127.0.0.1:0", state_dir=tmp_path))
    try:
        with pytest.raises(AdmissionRejectedError, match="already live at"):
            await cluster.coordinator.coordinator.admit(twin.address)
        await cluster.stop_node("a")  # once the first is gone, the id may move: only with its node secret
        with pytest.raises(NotOwnerError, match="only that node"):
            await cluster.coordinator.coordinator.admit(twin.address)
        record = await cluster.coordinator.coordinator.join(description_from_proto(twin.servicer.info),
                                                            first.node_secret)
        assert record.info.address == twin.address
    finally:
        await twin.stop(0)
        twin_store.close()


async def test_an_unreachable_address_is_refused_quickly(cluster: Cluster) -> None:
    with pytest.raises(AdmissionRejectedError, match="did not answer Info"):
        await asyncio.wait_for(cluster.coordinator.coordinator.admit("127.0.0.1:9"), timeout=10)
