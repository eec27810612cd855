"""A duplicate node (same id, another address) is refused at Join, and its Leave never marks the live node down."""

from __future__ import annotations

from dellm.node.config import NodeConfig
from dellm.node.daemon import node_info, start_node
from dellm.node.state import FeedbackStore
from dellm.protos.wire import NodeState
from tests.conftest import Cluster, script


async def test_a_duplicate_leaving_leaves_the_live_node_alone(cluster: Cluster) -> None:
    original = await cluster.add_node("twin", script([], default="Answer: 1"))
    assert cluster.coordinator is not None
    registry = cluster.coordinator.coordinator.registry
    node_id = original.servicer.info.node_id
    config = NodeConfig(listen="127.0.0.1:0", name="twin", state_dir=cluster.tmp / "state2", drain_grace_s=0.1,
                        coordinator=cluster.address)
    store = FeedbackStore(cluster.tmp / "twin2.sqlite3")
    backend = script([], default="Answer: 2")
    duplicate = await start_node(backend, node_info(node_id, "twin", backend), store, config)
    try:
        assert duplicate.address != original.address
        await cluster.wait_for(lambda: registry.get(node_id).info.address == original.address)
    finally:
        await duplicate.stop(0.1, coordinator=cluster.address)  # sends its Leave, with its own address
        store.close()
    record = registry.get(node_id)
    assert record.state == NodeState.UP and record.info.address == original.address


async def test_the_node_itself_leaving_goes_down(cluster: Cluster) -> None:
    node = await cluster.add_node("solo", script([], default="Answer: 1"))
    assert cluster.coordinator is not None
    registry = cluster.coordinator.coordinator.registry
    await cluster.nodes.pop("solo").stop(0.1, coordinator=cluster.address)
    assert registry.get(node.servicer.info.node_id).state == NodeState.DOWN
