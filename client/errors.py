"""Errors the client library raises, translated from gRPC status codes at the boundary."""

from __future__ import annotations

import grpc


class DellmError(RuntimeError):
    """Base of every client error; ``str()`` is the coordinator's own explanation."""

    exit_code = 1


class InvalidQueryError(DellmError):
    """The coordinator refused the request as invalid (INVALID_ARGUMENT)."""

    exit_code = 2


class UnavailableError(DellmError):
    """No coordinator at the address, or no node could answer (UNAVAILABLE)."""

    exit_code = 3


class NotFoundError(DellmError):
    """The query id or node id is unknown (NOT_FOUND)."""

    exit_code = 4


class DeadlineError(DellmError):
    """The call ran past its deadline (DEADLINE_EXCEEDED)."""

    exit_code = 5


_BY_CODE: dict[grpc.StatusCode, type[DellmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidQueryError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
}


def from_rpc_error(exc: grpc.aio.AioRpcError, address: str) -> DellmError:
    code = exc.code()
    details = exc.details() or code.name
    if code is grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "refused" in details.lower()):
        details = f"no coordinator answering at {address} ({details}); start one with `dellm-coordinator`"
    return _BY_CODE.get(code, DellmError)(f"{code.name}: {details}")
