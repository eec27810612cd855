"""Where nodes, their fitness and latency, and query records live."""

from __future__ import annotations

from pathlib import Path

from dellm.coordinator.errors import RegistryUnavailableError, UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry.base import NodeRegistry, NodeTable, QueryRecord
from dellm.coordinator.registry.memory import CachedRegistry, RegistryWriteError
from dellm.coordinator.registry.sqlite import SqliteRegistry
from dellm.protos import import_extra

__all__ = [
    "CachedRegistry",
    "NodeRegistry",
    "NodeTable",
    "QueryRecord",
    "RedisRegistry",
    "RegistryUnavailableError",
    "RegistryWriteError",
    "SqliteRegistry",
    "UnknownNodeError",
    "UnknownQueryError",
    "open_registry",
]


def __getattr__(name: str) -> object:
    """RedisRegistry is imported on first use: the redis client is an optional extra (dellm[redis])."""
    if name == "RedisRegistry":
        from dellm.coordinator.registry.redis import RedisRegistry

        return RedisRegistry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_registry(spec: str, *, initial_fitness: float = 0.5) -> NodeRegistry:
    """A registry from one string: ``redis://...`` or ``rediss://...`` is a shared Redis, anything else a SQLite file.

    The SQLite file's parent folders are created as needed (``:memory:`` gives a throwaway registry).
    A SQLite file belongs to one coordinator, which keeps its nodes in memory and writes behind
    (``CachedRegistry``); Redis is shared between coordinators and read directly.
    """
    if spec.startswith(("redis://", "rediss://")):
        import_extra("redis", "redis", "a redis:// registry")
        from dellm.coordinator.registry.redis import RedisRegistry

        return RedisRegistry(spec, initial_fitness=initial_fitness)
    if spec != ":memory:":
        Path(spec).expanduser().parent.mkdir(parents=True, exist_ok=True)
        spec = str(Path(spec).expanduser())
    # The cache's flusher retries a locked file itself: a short busy timeout keeps the connection's lock (which
    # a read from the event loop may need) from being held for long by a write that waits.
    return CachedRegistry(SqliteRegistry(spec, initial_fitness=initial_fitness, busy_timeout_s=1.0),
                          initial_fitness=initial_fitness, name=spec)
