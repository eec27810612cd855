"""Errors the coordinator raises; the servicer maps each to one gRPC status."""

from __future__ import annotations


class CoordinatorError(RuntimeError):
    """Base of the coordinator's own errors."""


class NodeCallError(CoordinatorError):
    """A call to a node failed (translated from grpc.aio.AioRpcError at the node client)."""

    def __init__(self, node_id: str, code: str, details: str) -> None:
        super().__init__(f"node {node_id}: {code}: {details}")
        self.node_id = node_id
        self.code = code
        self.details = details


class ChunkFailedError(CoordinatorError):
    """Every node tried for a chunk failed; the query cannot be answered."""
