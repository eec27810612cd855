"""ListNodes' view of a node: fitness per operation, quarantine by the coordinator's rule, canary results."""

from __future__ import annotations

import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import RouteConfig
from dellm.coordinator.convert import node_status_to_proto
from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos import dellm_pb2
from dellm.protos.wire import NodeDescription
from tests.conftest import Cluster, script


def test_node_status_has_fitness_per_operation_and_quarantine() -> None:
    record = NodeRecord(NodeDescription("n1", "127.0.0.1:1", name="n1"), fitness=0.6, op_stats={
        "MATH_OP": OpStats(0.1, trials=6, successes=0),  # below 0.2 after 5 judged answers: quarantined
        "SEARCH_OP": OpStats(0.8, trials=3, successes=3),
        "NOT_AN_OPERATION": OpStats(0.5, trials=1),  # a store written by a newer coordinator: left out
    })
    status = node_status_to_proto(record, 2, RouteConfig(), canaries=(3, 1))
    ops = {dellm_pb2.Operation.Name(o.operation): o for o in status.operations}
    assert set(ops) == {"MATH_OP", "SEARCH_OP"}
    assert ops["MATH_OP"].quarantined and ops["MATH_OP"].trials == 6
    assert not ops["SEARCH_OP"].quarantined and ops["SEARCH_OP"].fitness == pytest.approx(0.8)
    assert (status.in_flight, status.canaries_passed, status.canaries_failed) == (2, 3, 1)


async def test_canary_results_reach_list_nodes(cluster: Cluster) -> None:
    await cluster.add_node("wrong", script([], default="Answer: 1"))
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator.coordinator
    node = coordinator.registry.list_nodes()[0]
    result = await coordinator.canaries.probe(node)
    async with DellmClient(cluster.address) as client:
        status = (await client.nodes())[0]
    assert result.verdict.value == "WRONG"
    assert (status.canaries_passed, status.canaries_failed) == (0, 1)
    assert [dellm_pb2.Operation.Name(o.operation) for o in status.operations] == ["MATH_OP"]
