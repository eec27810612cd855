"""The registry interface every backend (SQLite, Redis, the write-behind cache) implements, and the
live-node table routing reads."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos.wire import NodeDescription, NodeState


class NodeTable:
    """The live nodes, indexed for routing: lookup by id and a random sample in O(1), and a
    ``version`` that changes with every update (a cached ranking knows when it is stale)."""

    def __init__(self, records: Iterable[NodeRecord] = ()) -> None:
        self._live: dict[str, NodeRecord] = {}
        self._ids: list[str] = []  # the live ids, for sampling
        self._position: dict[str, int] = {}
        self.version = 0
        for record in records:
            self.put(record)

    def put(self, record: NodeRecord) -> None:
        """Insert, refresh or (when its state is not "up") drop a node."""
        node_id = record.node_id
        self.version += 1
        if record.state != NodeState.UP:
            self.discard(node_id)
            return
        if node_id not in self._live:
            self._position[node_id] = len(self._ids)
            self._ids.append(node_id)
        self._live[node_id] = record

    def discard(self, node_id: str) -> None:
        if self._live.pop(node_id, None) is None:
            return
        self.version += 1
        index = self._position.pop(node_id)
        last = self._ids.pop()
        if last != node_id:  # move the last id into the hole
            self._ids[index] = last
            self._position[last] = index

    def get(self, node_id: str) -> NodeRecord | None:
        return self._live.get(node_id)

    def sample(self, rng: random.Random, count: int) -> list[NodeRecord]:
        """Up to ``count`` distinct live nodes, uniformly at random."""
        if count >= len(self._ids):
            return list(self._live.values())
        return [self._live[self._ids[int(rng.random() * len(self._ids))]] for _ in range(count)]

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(self._live.values())









@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    query: str
    answer: str
    created: float
    detail: dict[str, Any]  # per-chunk answers and provenance, JSON-serializable


def archived_figures(record: NodeRecord) -> dict[str, Any]:
    """What a pruned node keeps (JSON-serializable): what it earned, not where it was."""
    return {"fitness": record.fitness, "latency_ms": record.latency_ms, "answers": record.answers,
            "correct": record.correct, "failures": record.failures,
            "op_stats": {op: [s.fitness, s.trials, s.successes] for op, s in record.op_stats.items()}}


def from_archived(node_id: str, kept: dict[str, Any]) -> NodeRecord:
    """A record holding a pruned node's figures (its description is only the id until it rejoins)."""
    return NodeRecord(NodeDescription(node_id, ""), kept["fitness"], kept["latency_ms"], NodeState.GONE, 0.0,
                      kept["answers"], kept["correct"], kept["failures"], 0,
                      {op: OpStats(*figures) for op, figures in kept["op_stats"].items()})


def moving_latency(old: float | None, sample_ms: float | None, alpha: float, failed: bool) -> float | None:
    """A node's latency average after one answer: a failed or unmeasured answer leaves it as it was."""
    if sample_ms is None or failed:
        return old
    return sample_ms if old is None else (1 - alpha) * old + alpha * sample_ms


class NodeRegistry(Protocol):
    def upsert_node(self, info: NodeDescription, *, now: float) -> NodeRecord:
        """Register or refresh a node; a known node id keeps its fitness and counters."""
        ...

    def set_state(self, node_id: str, state: str, *, now: float | None = None) -> None: ...

    def get(self, node_id: str) -> NodeRecord: ...

    def list_nodes(self) -> list[NodeRecord]: ...

    def table(self) -> NodeTable:
        """The live nodes for routing (kept in memory where the backend can, else read afresh)."""
        ...

    def record_answer(
        self, node_id: str, latency_ms: float | None, *, failed: bool, alpha: float, now: float | None = None,
    ) -> NodeRecord:
        """Fold one answer's latency into the moving average; count failures (consecutive, too);
        ``now`` (default: the clock) is the node's last-seen time."""
        ...

    def apply_reward(
        self, node_id: str, reward: float, correct: bool | None, update: Callable[[float], float],
        operation: str = "",
    ) -> tuple[float, float]:
        """Atomically fitness = update(fitness), and the same for the fitness at ``operation``
        (starting from the overall fitness), counting a trial and a success when ``correct``;
        returns the overall (before, after)."""
        ...

    def prune(self, node_id: str) -> None:
        """Drop the node from the registry (list_nodes, get), archiving its figures (fitness, counters, per
        operation stats): ``upsert_node`` of the same id restores them. UnknownNodeError when not there."""
        ...

    def node_credential(self, node_id: str) -> str | None:
        """The digest of the secret the node id is bound to (coordinator/identity.py), None while unbound."""
        ...

    def bind_credential(self, node_id: str, digest: str) -> None:
        """Bind ``node_id`` to the secret whose digest is ``digest`` (kept across restarts)."""
        ...

    def save_query(self, record: QueryRecord) -> None: ...

    def get_query(self, query_id: str) -> QueryRecord: ...

    def close(self) -> None: ...
