"""The routing shortlist: which nodes a decision scores in a network larger than ``shortlist_size``."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from dellm.coordinator.config import RouteConfig
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.route import Shortlist, route_chunk
from dellm.coordinator.registry import NodeTable
from dellm.coordinator.types import Chunk, NodeRecord, OpStats
from dellm.protos.wire import NodeDescription

CONFIG = RouteConfig(exploration="none", shortlist_size=4, shortlist_explorers=2, shortlist_refresh_s=1.0)
CHUNK = Chunk("c1", Operation.MATH_OP, "What is 2 + 2?", 4, 0.1)
OP = CHUNK.operation.value


def _node(i: int, latency_ms: float = 500.0, fitness: float = 0.5, trials: int = 0) -> NodeRecord:
    stats = {OP: OpStats(fitness, trials, trials)} if trials else {}
    return NodeRecord(NodeDescription(f"n{i:03d}", f"127.0.0.1:{6000 + i}"), fitness=fitness, latency_ms=latency_ms,
                      op_stats=stats)


def _network(size: int) -> list[NodeRecord]:
    """Node i is slower and less fit than node i - 1: the ranking is n000, n001, ..."""
    return [_node(i, latency_ms=100.0 + 10 * i, fitness=0.9 - 0.004 * i) for i in range(size)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _ids(nodes: list[NodeRecord]) -> list[str]:
    return [n.node_id for n in nodes]


def test_a_small_network_is_scored_whole() -> None:
    table = NodeTable(_network(4))

    assert sorted(_ids(Shortlist(CONFIG).candidates(table, OP, {}))) == ["n000", "n001", "n002", "n003"]


def test_a_large_network_yields_the_best_nodes_plus_explorers() -> None:
    table = NodeTable(_network(200))

    candidates = _ids(Shortlist(CONFIG).candidates(table, OP, {}, rng=random.Random(1)))

    assert candidates[:4] == ["n000", "n001", "n002", "n003"]
    assert 4 < len(candidates) <= 6  # plus up to two random explorers
    assert route_chunk(CHUNK, table, {}, CONFIG).node_ids == ("n000",)  # what scoring all would pick ...
    assert route_chunk(CHUNK, Shortlist(CONFIG).candidates(table, OP, {}), {}, CONFIG).node_ids == ("n000",)  # ... too


def test_busy_nodes_come_along_but_do_not_count_toward_the_idle_quota() -> None:
    table = NodeTable(_network(200))
    in_flight = {"n000": 3, "n001": 1}

    candidates = _ids(Shortlist(replace(CONFIG, shortlist_explorers=0)).candidates(table, OP, in_flight))

    assert candidates == ["n000", "n001", "n002", "n003", "n004", "n005"]
    assert route_chunk(CHUNK, Shortlist(CONFIG).candidates(table, OP, in_flight), in_flight, CONFIG).node_ids != (
        "n000",)  # its queue counts against it


def test_excluded_nodes_are_never_candidates() -> None:
    table = NodeTable(_network(200))
    excluded = {"n000", "n001", "n150"}

    for seed in range(50):
        candidates = Shortlist(CONFIG).candidates(table, OP, {}, frozenset(excluded), random.Random(seed))
        assert not excluded & set(_ids(candidates))


def test_explorers_reach_nodes_far_down_the_ranking() -> None:
    table = NodeTable(_network(200))
    shortlist = Shortlist(CONFIG)
    rng = random.Random(7)

    seen = {n.node_id for _ in range(400) for n in shortlist.candidates(table, OP, {}, rng=rng)}

    assert len(seen) > 150  # 2 explorers x 400 decisions over 196 nodes outside the top 4


def test_the_ranking_is_rebuilt_after_the_refresh_interval_when_the_table_changed() -> None:
    clock = FakeClock()
    table = NodeTable(_network(200))
    shortlist = Shortlist(replace(CONFIG, shortlist_explorers=0), clock)
    assert "n150" not in _ids(shortlist.candidates(table, OP, {}))

    table.put(_node(150, latency_ms=50.0, fitness=0.99, trials=20))  # n150 became the best node
    clock.now = 0.5
    assert "n150" not in _ids(shortlist.candidates(table, OP, {}))  # the ranking is reused within the interval
    clock.now = 1.5
    assert _ids(shortlist.candidates(table, OP, {}))[0] == "n150"


def test_a_node_that_went_down_is_dropped_at_once_even_from_a_cached_ranking() -> None:
    table = NodeTable(_network(200))
    shortlist = Shortlist(replace(CONFIG, shortlist_explorers=0), FakeClock())
    shortlist.candidates(table, OP, {})

    table.put(replace(table.get("n000"), state="down"))  # type: ignore[type-var]

    assert _ids(shortlist.candidates(table, OP, {})) == ["n001", "n002", "n003", "n004"]


def test_quarantined_nodes_rank_last() -> None:
    nodes = _network(200)
    nodes[0] = _node(0, latency_ms=10.0, fitness=0.1, trials=10)  # fastest, but wrong at this operation
    table = NodeTable(nodes)

    assert "n000" not in _ids(Shortlist(replace(CONFIG, shortlist_explorers=0)).candidates(table, OP, {}))


@pytest.mark.parametrize("exploration", ["none", "ucb", "thompson"])
def test_every_exploration_mode_routes_a_large_network(exploration: str) -> None:
    table = NodeTable(_network(500))
    config = replace(CONFIG, exploration=exploration)
    shortlist = Shortlist(config)
    rng = random.Random(3)

    chosen = [route_chunk(CHUNK, shortlist.candidates(table, OP, {}, rng=rng), {}, config, rng=rng).node_ids[0]
              for _ in range(200)]

    assert {"n000", "n001"} & set(chosen)  # the best nodes are found
    assert all(table.get(node_id) is not None for node_id in chosen)
