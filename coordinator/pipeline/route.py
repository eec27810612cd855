"""Stage 2: choose the nodes for a chunk.

score = latency_weight x normalized latency + fitness_weight x (1 - fitness), lowest best,
picked with a heap. A node's expected latency grows with the work already queued on it
(a node serves one generation at a time), so busy nodes naturally yield to idle ones.
Past ``RouteConfig.shortlist_size`` live nodes a ``Shortlist`` chooses which of them a decision
scores, so that it costs about the same at 10,000 nodes as at 40. No I/O.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
import time
from collections.abc import Callable, Collection, Iterable, Mapping

from dellm.coordinator.config import RouteConfig
from dellm.coordinator.errors import NoNodesAvailableError
from dellm.coordinator.registry.base import NodeTable
from dellm.coordinator.types import Assignment, Chunk, NodeRecord
from dellm.protos.wire import NodeState


def redundancy_for(chunk: Chunk, config: RouteConfig) -> int:
    return config.redundancy if chunk.complexity >= config.redundancy_threshold else 1


def effective_fitness(
    node: NodeRecord, operation: str, total_trials: int, config: RouteConfig, rng: random.Random | None
) -> float:
    """The fitness routing uses: the node's fitness at ``operation``, made optimistic (UCB) or sampled
    (Thompson) so that nodes with little evidence still get tried."""
    stats = node.op_stats.get(operation)
    trials = stats.trials if stats is not None else 0
    if config.exploration == "ucb":
        bonus = config.exploration_weight * math.sqrt(math.log(1 + total_trials) / (1 + trials))
        return min(1.0, node.fitness_for(operation) + bonus)
    if config.exploration == "thompson":
        successes = stats.successes if stats is not None else 0
        prior = config.thompson_prior_strength
        fitness = min(0.99, max(0.01, node.fitness))
        failures = max(0, trials - successes)  # never negative, whatever a registry holds
        return (rng or random.Random(0)).betavariate(prior * fitness + successes, prior * (1 - fitness) + failures)
    return node.fitness_for(operation)


def quarantined(node: NodeRecord, operation: str, config: RouteConfig) -> bool:
    stats = node.op_stats.get(operation)
    return (stats is not None and stats.trials >= config.quarantine_min_trials
            and stats.fitness < config.quarantine_fitness)


def latency_prior(nodes: Iterable[NodeRecord], config: RouteConfig) -> float:
    """The latency assumed for a node not measured yet: the median of those measured."""
    measured = [n.latency_ms for n in nodes if n.latency_ms is not None]
    return statistics.median(measured) if measured else config.default_latency_ms


def seed_score(expected_latency: float, worst_latency: float, fitness: float, config: RouteConfig) -> float:
    """The seed's score, lower is better: latency_weight x normalized latency + fitness_weight x (1 - fitness)."""
    return config.latency_weight * expected_latency / worst_latency + config.fitness_weight * (1.0 - fitness)


def score_nodes(
    nodes: Iterable[NodeRecord], in_flight: Mapping[str, int], config: RouteConfig, operation: str = "",
    rng: random.Random | None = None,
) -> list[tuple[float, str]]:
    """(score, node_id) for each live node; lower is better. Quarantined nodes are left out
    while any other live node remains, but for a rare probe (with ``rng``) to see if they recovered."""
    live = [n for n in nodes if n.state == NodeState.UP]
    probe = rng.random() < config.quarantine_probe_rate if rng is not None else False
    trusted = [n for n in live if probe or not quarantined(n, operation, config)]
    live = trusted or live
    total_trials = (sum(n.op_stats[operation].trials for n in live if operation in n.op_stats)
                    if config.exploration == "ucb" else 0)  # only UCB's bonus reads it
    prior = latency_prior(live, config)
    expected = {
        n.node_id: (n.latency_ms if n.latency_ms is not None else prior) * (1 + in_flight.get(n.node_id, 0))
        for n in live
    }
    worst = max(expected.values(), default=1.0) or 1.0
    return [
        (seed_score(expected[n.node_id], worst, effective_fitness(n, operation, total_trials, config, rng), config),
         n.node_id)
        for n in live
    ]


def route_chunk(
    chunk: Chunk,
    nodes: Iterable[NodeRecord],
    in_flight: Mapping[str, int],
    config: RouteConfig,
    *,
    count: int | None = None,
    exclude: frozenset[str] = frozenset(),
    rng: random.Random | None = None,
) -> Assignment:
    """Pick ``count`` (default: by complexity) distinct nodes, never one from ``exclude``."""
    wanted = redundancy_for(chunk, config) if count is None else count
    scored = score_nodes(nodes, in_flight, config, chunk.operation.value, rng)
    candidates = [(s, node_id) for s, node_id in scored if node_id not in exclude]
    if not candidates:
        raise NoNodesAvailableError(f"no live node can take chunk {chunk.chunk_id}")
    chosen = heapq.nsmallest(wanted, candidates)  # ties break on node id: reproducible
    return Assignment(chunk_id=chunk.chunk_id, node_ids=tuple(node_id for _, node_id in chosen))


class Shortlist:
    """The candidates one routing decision scores when the network is too large to score whole.

    Per operation type it keeps the live nodes ranked by their deterministic score (measured latency
    and fitness at that operation; quarantined nodes last), rebuilt when the table has changed and the
    ranking is older than ``shortlist_refresh_s``. A decision walks the ranking for the
    ``shortlist_size`` best idle nodes (the busy ones met on the way come too: their queue is counted
    when they are scored) and adds ``shortlist_explorers`` nodes drawn at random from the whole table,
    so a node ranked low, or one that joined after the last rebuild, still gets tried. The scoring
    itself, exploration included, is ``score_nodes``'s, on those candidates.
    """

    def __init__(self, config: RouteConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._rankings: dict[str, tuple[int, float, list[str]]] = {}  # operation -> (table version, built, ids)

    def candidates(
        self, table: NodeTable, operation: str, in_flight: Mapping[str, int], exclude: Collection[str] = (),
        rng: random.Random | None = None,
    ) -> list[NodeRecord]:
        config = self._config
        if len(table) <= config.shortlist_size + len(exclude):
            return list(table)
        chosen: dict[str, NodeRecord] = {}
        idle = 0
        for node_id in self._ranking(table, operation):
            node = table.get(node_id)
            if node is None or node_id in exclude:
                continue
            chosen[node_id] = node
            idle += not in_flight.get(node_id)
            if idle >= config.shortlist_size:
                break
        for node in table.sample(rng or random.Random(0), config.shortlist_explorers):
            if node.node_id not in exclude:
                chosen.setdefault(node.node_id, node)
        return list(chosen.values())

    def _ranking(self, table: NodeTable, operation: str) -> list[str]:
        now = self._clock()
        cached = self._rankings.get(operation)
        if cached is not None and (cached[0] == table.version or now - cached[1] < self._config.shortlist_refresh_s):
            return cached[2]
        config = self._config
        nodes = list(table)
        prior = latency_prior(nodes, config)
        worst = max((n.latency_ms for n in nodes if n.latency_ms is not None), default=prior) or 1.0

        def key(node: NodeRecord) -> tuple[bool, float, str]:
            latency = node.latency_ms if node.latency_ms is not None else prior
            score = seed_score(latency, worst, node.fitness_for(operation), config)
            return quarantined(node, operation, config), score, node.node_id

        ranking = [node.node_id for node in sorted(nodes, key=key)]
        self._rankings[operation] = (table.version, now, ranking)
        return ranking
