"""Stage 2: choose the nodes for a chunk.

score = latency_weight x normalized latency + fitness_weight x (1 - fitness), lowest best,
picked with a heap. A node's expected latency grows with the work already queued on it
(a node serves one generation at a time), so busy nodes naturally yield to idle ones.
Pure: no I/O.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable, Mapping

from coordinator.config import RouteConfig
from coordinator.types import Assignment, Chunk, NodeRecord


class NoNodesAvailableError(RuntimeError):
    """No live node can take the chunk."""


def redundancy_for(chunk: Chunk, config: RouteConfig) -> int:
    return config.redundancy if chunk.complexity >= config.redundancy_threshold else 1


def score_nodes(
    nodes: Iterable[NodeRecord], in_flight: Mapping[str, int], config: RouteConfig
) -> list[tuple[float, str]]:
    """(score, node_id) for each live node; lower is better."""
    live = [n for n in nodes if n.state == "up"]
    measured = [n.latency_ms for n in live if n.latency_ms is not None]
    prior = statistics.median(measured) if measured else config.default_latency_ms
    expected = {
        n.node_id: (n.latency_ms if n.latency_ms is not None else prior) * (1 + in_flight.get(n.node_id, 0))
        for n in live
    }
    worst = max(expected.values(), default=1.0) or 1.0
    return [
        (
            config.latency_weight * expected[n.node_id] / worst + config.fitness_weight * (1.0 - n.fitness),
            n.node_id,
        )
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
) -> Assignment:
    """Pick ``count`` (default: by complexity) distinct nodes, never one from ``exclude``."""
    wanted = redundancy_for(chunk, config) if count is None else count
    candidates = [(s, node_id) for s, node_id in score_nodes(nodes, in_flight, config) if node_id not in exclude]
    if not candidates:
        raise NoNodesAvailableError(f"no live node can take chunk {chunk.chunk_id}")
    chosen = heapq.nsmallest(wanted, candidates)  # ties break on node id: reproducible
    return Assignment(chunk_id=chunk.chunk_id, node_ids=tuple(node_id for _, node_id in chosen))
