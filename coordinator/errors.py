"""Every error the coordinator's servicer can see, each carrying the gRPC status it is sent as.

The servicer has one ``except CoordinatorError`` per RPC and aborts with ``exc.status`` and
``str(exc)``, mirroring client/errors.py on the other side. Raised by the stages, the registry and
the service; internal errors that never reach a client (a rejected model plan, an unusable vote)
stay with the stage that raises them.

    CoordinatorError              INTERNAL
    ├── InvalidQueryError         INVALID_ARGUMENT     empty, whitespace-only or over-long query
    ├── TooManyQueriesError       RESOURCE_EXHAUSTED   over the in-flight limit, in total or per client
    ├── NoNodesAvailableError     UNAVAILABLE          no live node can take a chunk
    ├── ChunkFailedError          UNAVAILABLE          every node tried for a chunk failed
    ├── RegistryUnavailableError  UNAVAILABLE          the registry's store cannot be reached
    ├── NodeCallError             UNAVAILABLE          a call to a node failed (from grpc.aio.AioRpcError)
    ├── AdmissionRejectedError    FAILED_PRECONDITION  a node that may not join, and why
    │   └── JoinLimitedError      RESOURCE_EXHAUSTED   too many Joins from one address, or too many nodes
    ├── NotOwnerError             PERMISSION_DENIED    a Join, Leave or Feedback without the owner's proof
    ├── UnknownNodeError          NOT_FOUND            no node with this id (also a KeyError)
    └── UnknownQueryError         NOT_FOUND            no query with this id (also a KeyError)
"""

from __future__ import annotations

from typing import ClassVar

import grpc

MAX_SHOWN_ID = 64  # characters of a client-given id an error message repeats


def shown(value: str) -> str:
    """``value`` (an id a client or node sent) as an error message may repeat it: quoted, and cut to
    MAX_SHOWN_ID characters saying how long it was. A 3 MB id echoed in the status details made the
    reply itself too large (RESOURCE_EXHAUSTED instead of NOT_FOUND)."""
    if len(value) <= MAX_SHOWN_ID:
        return repr(value)
    return f"{value[:MAX_SHOWN_ID]!r}... ({len(value)} characters)"


class CoordinatorError(RuntimeError):
    """Base of the coordinator's own errors; ``status`` is the gRPC status a client receives."""

    status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL

    def __str__(self) -> str:  # KeyError's repr-style str would quote the message
        return str(self.args[0]) if self.args else (self.__doc__ or type(self).__name__)


class InvalidQueryError(CoordinatorError, ValueError):
    """The query is empty or too large to plan."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class TooManyQueriesError(CoordinatorError):
    """More queries in flight than allowed, in total or from one client: refused at once, never queued."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoNodesAvailableError(CoordinatorError):
    """No live node can take a chunk."""

    status = grpc.StatusCode.UNAVAILABLE


class ChunkFailedError(CoordinatorError):
    """Every node tried for a chunk failed; the query cannot be answered."""

    status = grpc.StatusCode.UNAVAILABLE


class RegistryUnavailableError(CoordinatorError):
    """The registry's store (e.g. a Redis server) could not be reached; the message names it, never a password."""

    status = grpc.StatusCode.UNAVAILABLE


class NodeCallError(CoordinatorError):
    """A call to a node failed (translated from grpc.aio.AioRpcError at the node client)."""

    status = grpc.StatusCode.UNAVAILABLE

    def __init__(self, node_id: str, code: str, details: str) -> None:
        super().__init__(f"node {node_id}: {code}: {details}")
        self.node_id = node_id
        self.code = code
        self.details = details


class AdmissionRejectedError(CoordinatorError):
    """A node may not join: it does not answer, does not match its claim, or is a duplicate."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class JoinLimitedError(AdmissionRejectedError):
    """Too many Joins from one peer address in a short time, or the registry holds its bound of nodes."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class NotOwnerError(CoordinatorError):
    """The caller did not prove it owns what it acts on: a node id's secret (Join, Leave) or a query's
    feedback token (Feedback)."""

    status = grpc.StatusCode.PERMISSION_DENIED


class UnknownNodeError(CoordinatorError, KeyError):
    """No node with this id is registered."""

    status = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:
        return f"no node with id {shown(str(self.args[0]))}" if self.args else "no such node"


class UnknownQueryError(CoordinatorError, KeyError):
    """No query with this id was recorded."""

    status = grpc.StatusCode.NOT_FOUND

    def __str__(self) -> str:
        return f"no query with id {shown(str(self.args[0]))}" if self.args else "no such query"
