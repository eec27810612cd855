"""The registry interface every backend (SQLite now, Redis later) implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dellm.coordinator.types import NodeRecord
from dellm.protos.wire import NodeDescription

if TYPE_CHECKING:
    from dellm.coordinator.registry.memory import NodeTable


class UnknownNodeError(KeyError):
    """No node with this id is registered."""


class UnknownQueryError(KeyError):
    """No query with this id was recorded."""


class RegistryUnavailableError(RuntimeError):
    """The registry's store (e.g. a Redis server) could not be reached; the message names it, never a password."""


@dataclass(frozen=True)
class QueryRecord:
    query_id: str
    query: str
    answer: str
    created: float
    detail: dict[str, Any]  # per-chunk answers and provenance, JSON-serializable


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

    def save_query(self, record: QueryRecord) -> None: ...

    def get_query(self, query_id: str) -> QueryRecord: ...

    def close(self) -> None: ...
