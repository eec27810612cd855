"""Where nodes, their fitness and latency, and query records live."""

from __future__ import annotations

from pathlib import Path

from dellm.coordinator.registry.base import (
    NodeRegistry,
    QueryRecord,
    RegistryUnavailableError,
    UnknownNodeError,
    UnknownQueryError,
)
from dellm.coordinator.registry.memory import CachedRegistry, NodeTable
from dellm.coordinator.registry.redis import RedisRegistry
from dellm.coordinator.registry.sqlite import SqliteRegistry

__all__ = [
    "CachedRegistry",
    "NodeRegistry",
    "NodeTable",
    "QueryRecord",
    "RedisRegistry",
    "RegistryUnavailableError",
    "SqliteRegistry",
    "UnknownNodeError",
    "UnknownQueryError",
    "open_registry",
]


def open_registry(spec: str, *, initial_fitness: float = 0.5) -> NodeRegistry:
    """A registry from one string: ``redis://...`` or ``rediss://...`` is a shared Redis, anything else a SQLite file.

    The SQLite file's parent folders are created as needed (``:memory:`` gives a throwaway registry).
    A SQLite file belongs to one coordinator, which keeps its nodes in memory and writes behind
    (``CachedRegistry``); Redis is shared between coordinators and read directly.
    """
    if spec.startswith(("redis://", "rediss://")):
        return RedisRegistry(spec, initial_fitness=initial_fitness)
    if spec != ":memory:":
        Path(spec).expanduser().parent.mkdir(parents=True, exist_ok=True)
        spec = str(Path(spec).expanduser())
    return CachedRegistry(SqliteRegistry(spec, initial_fitness=initial_fitness), initial_fitness=initial_fitness)
