"""Node identity over real gRPC: the hijack (Leave(victim), then Join(victim id, own address)) and its variants.

The impostor holds the cluster token (here the cluster has none: anyone may call) and serves Info as
the victim's id from its own address, exactly what a hostile contributor can do. Before node
secrets, the Leave marked the victim down and the Join rebound its id (fitness, prompts, feedback)
to the impostor, and the victim's own re-join was then refused as a duplicate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.identity import secret_digest
from dellm.node.daemon import SERVICE_NAME, join_coordinator
from dellm.node.state import NODE_SECRET_FILE, load_or_create_node_secret
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, channel, new_server, set_serving
from dellm.protos.wire import NodeState
from tests.conftest import Cluster, script

REPLY = [{"pattern": ".", "reply": "Paris is the capital of France."}]


class Impostor(dellm_pb2_grpc.NodeServiceServicer):
    """Test double: answers Info as whatever node it claims to be."""

    def __init__(self, info: dellm_pb2.NodeInfo) -> None:
        self.info = info

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info


async def serve_impostor(claimed: dellm_pb2.NodeInfo) -> tuple[grpc.aio.Server, dellm_pb2.NodeInfo]:
    server = new_server()
    info = dellm_pb2.NodeInfo()
    info.CopyFrom(claimed)
    info.address = bind(server, "127.0.0.1:0")
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(Impostor(info), server)
    health = add_health_and_reflection(server, [SERVICE_NAME])
    await server.start()
    await set_serving(health, [SERVICE_NAME], True)
    return server, info


async def call(address: str, method: str, request: object) -> object:
    async with channel(address) as ch:
        return await getattr(dellm_pb2_grpc.CoordinatorServiceStub(ch), method)(request, timeout=10)


@pytest.fixture
async def victim_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0))
    await c.start_coordinator()
    await c.add_node("victim", script(REPLY))
    try:
        yield c
    finally:
        await c.close()


async def test_the_hijack_is_refused_and_the_victim_keeps_its_id(victim_cluster: Cluster) -> None:
    c = victim_cluster
    victim = c.nodes["victim"].servicer.info
    registry = c.coordinator.coordinator.registry
    registry.apply_reward(victim.node_id, 0.05, True, lambda f: 0.9)  # fitness worth stealing
    server, impostor = await serve_impostor(victim)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as left:
            await call(c.address, "Leave", dellm_pb2.LeaveRequest(node_id=victim.node_id))
        assert left.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "node secret" in (left.value.details() or "")
        assert registry.get(victim.node_id).state == NodeState.UP

        for guess in ("", "x" * 43):  # none, and a well-formed wrong one
            with pytest.raises(grpc.aio.AioRpcError) as joined:
                await call(c.address, "Join", dellm_pb2.JoinRequest(info=impostor, node_secret=guess))
            assert joined.value.code() == grpc.StatusCode.PERMISSION_DENIED
        record = registry.get(victim.node_id)
        assert record.info.address == victim.address and record.fitness == 0.9 and record.state == NodeState.UP

        # the victim's own heartbeat Join is still taken
        fitness = await join_coordinator(c.address, victim, 5.0, node_secret=c.nodes["victim"].node_secret)
        assert fitness == pytest.approx(0.9)
    finally:
        await server.stop(None)


async def test_the_owner_moves_its_id_only_once_the_old_address_is_dead(victim_cluster: Cluster) -> None:
    c = victim_cluster
    victim = c.nodes["victim"].servicer.info
    secret = c.nodes["victim"].node_secret
    assert secret and c.coordinator.coordinator.registry.node_credential(victim.node_id) == secret_digest(secret)
    server, moved = await serve_impostor(victim)  # the same node (it has the secret) at a second address
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # while the old address still answers as the id
            await call(c.address, "Join", dellm_pb2.JoinRequest(info=moved, node_secret=secret))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "already live" in (refused.value.details() or "")
        await c.stop_node("victim")  # its old address is dead now
        reply = await call(c.address, "Join", dellm_pb2.JoinRequest(info=moved, node_secret=secret))
        assert isinstance(reply, dellm_pb2.JoinReply)
        assert c.coordinator.coordinator.registry.get(victim.node_id).info.address == moved.address
    finally:
        await server.stop(None)


async def test_an_unbound_id_marked_down_is_not_taken_while_it_answers(victim_cluster: Cluster) -> None:
    """An id with no secret yet (a registry from before secrets, or a node found by mDNS) that the
    registry thinks is down is still probed: the impostor's Join is refused while the node answers."""
    c = victim_cluster
    coordinator = c.coordinator.coordinator
    node = await c.add_node("legacy", script(REPLY), join=False)
    await coordinator.admit(node.address)  # as discovery admits it: no secret
    assert coordinator.registry.node_credential(node.servicer.info.node_id) is None
    coordinator.registry.set_state(node.servicer.info.node_id, NodeState.DOWN)
    server, impostor = await serve_impostor(node.servicer.info)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(c.address, "Join", dellm_pb2.JoinRequest(info=impostor))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert coordinator.registry.get(node.servicer.info.node_id).info.address == node.address
    finally:
        await server.stop(None)


async def test_a_node_restarted_with_its_state_rejoins_and_keeps_its_fitness(victim_cluster: Cluster) -> None:
    c = victim_cluster
    node_id = c.nodes["victim"].servicer.info.node_id
    c.coordinator.coordinator.registry.apply_reward(node_id, 0.05, True, lambda f: 0.8)
    await c.stop_node("victim")
    node = await c.add_node("victim", script(REPLY))  # a new port, the same state folder (node id and secret)
    registry = c.coordinator.coordinator.registry
    await c.wait_for(lambda: registry.get(node_id).info.address == node.address)
    record = registry.get(node_id)
    assert record.state == NodeState.UP and record.fitness == 0.8


def test_a_damaged_node_secret_file_is_refused_naming_it(tmp_path: Path) -> None:
    from dellm.node.state import NodeStateError

    secret = load_or_create_node_secret(tmp_path)
    assert load_or_create_node_secret(tmp_path) == secret  # kept, not remade
    path = tmp_path / NODE_SECRET_FILE
    assert path.stat().st_mode & 0o077 == 0
    path.write_text("not a secret")
    with pytest.raises(NodeStateError, match=str(path)):
        load_or_create_node_secret(tmp_path)


async def test_a_too_short_secret_is_refused(victim_cluster: Cluster) -> None:
    server, other = await serve_impostor(dellm_pb2.NodeInfo(node_id="other".ljust(32, "0"), name="other",
                                                            model="scripted", backend="scripted",
                                                            protocol_version=1, cluster="default"))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(victim_cluster.address, "Join", dellm_pb2.JoinRequest(info=other, node_secret="short"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "short" not in (refused.value.details() or "")  # never echoed
    finally:
        await server.stop(None)
