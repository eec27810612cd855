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


def _model_node(i: int, model: str, latency_ms: float, operation: str = OP, fitness: float = 0.5,
                trials: int = 0) -> NodeRecord:
    stats = {operation: OpStats(fitness, trials, round(fitness * trials))} if trials else {}
    return NodeRecord(NodeDescription(f"n{i:03d}", f"127.0.0.1:{6000 + i}", model=model), latency_ms=latency_ms,
                      op_stats=stats)


@pytest.mark.parametrize(
    ("operation", "brought"),
    [
        pytest.param(Operation.SEARCH_OP, True, id="unchecked-operation-brings-the-strongest-model"),
        pytest.param(Operation.GENERATE_OP, True, id="another-unchecked-operation"),
        pytest.param(Operation.MATH_OP, False, id="checked-operation-by-rank-alone"),
    ],
)
def test_the_strongest_model_is_a_candidate_however_it_ranks(operation: Operation, brought: bool) -> None:
    """199 fast copies of a 0.5b model and one slow 1.5b node, ranked last: for work no exact check
    judges, the 1.5b node is among the candidates (and chosen, paired with a 0.5b)."""
    nodes = [_model_node(i, "qwen2.5-coder-0.5b-instruct", 100.0 + i) for i in range(199)]
    nodes.append(_model_node(199, "qwen2.5-coder-1.5b-instruct", 5000.0))
    table = NodeTable(nodes)
    config = replace(CONFIG, shortlist_explorers=0)
    chunk = Chunk("c1", operation, "some task", 4, 0.9)

    candidates = _ids(Shortlist(config).candidates(table, operation.value, {}))

    assert ("n199" in candidates) is brought
    assert len(candidates) == config.shortlist_size + brought
    chosen = route_chunk(chunk, Shortlist(config).candidates(table, operation.value, {}), {}, config).node_ids
    assert chosen == (("n000", "n199") if brought else ("n000", "n001"))


def test_an_excluded_strongest_model_is_not_brought() -> None:
    nodes = [_model_node(i, "qwen2.5-coder-0.5b-instruct", 100.0 + i, "SEARCH_OP") for i in range(199)]
    nodes.append(_model_node(199, "qwen2.5-coder-1.5b-instruct", 5000.0, "SEARCH_OP"))
    shortlist = Shortlist(replace(CONFIG, shortlist_explorers=0))

    candidates = _ids(shortlist.candidates(NodeTable(nodes), "SEARCH_OP", {}, frozenset({"n199"})))

    assert "n199" not in candidates


def test_the_ranking_weighs_fitness_by_its_evidence() -> None:
    """n001, 3x slower than n000 but proven right (0.9 over 20 trials) where n000 is proven wrong (0.3),
    ranks first, as scoring would choose it; with the seed's weights n000 would."""
    nodes = [_node(0, latency_ms=100.0, fitness=0.3, trials=20), _node(1, latency_ms=300.0, fitness=0.9, trials=20),
             *(_node(i, latency_ms=300.0) for i in range(2, 8))]
    table = NodeTable(nodes)
    config = replace(CONFIG, shortlist_explorers=0)

    assert _ids(Shortlist(config).candidates(table, OP, {}))[:2] == ["n001", "n000"]
    assert route_chunk(CHUNK, Shortlist(config).candidates(table, OP, {}), {}, config).node_ids == ("n001",)
    seed_only = replace(config, fitness_weight_cap=config.fitness_weight)
    assert _ids(Shortlist(seed_only).candidates(table, OP, {}))[:2] == ["n000", "n001"]
