"""Where nodes, their fitness and latency, and query records live."""

from coordinator.registry.base import NodeRegistry, QueryRecord, UnknownNodeError, UnknownQueryError
from coordinator.registry.sqlite import SqliteRegistry

__all__ = ["NodeRegistry", "QueryRecord", "SqliteRegistry", "UnknownNodeError", "UnknownQueryError"]
