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


class AuthError(DellmError):
    """The coordinator wants a (different) cluster token (UNAUTHENTICATED), or refused the caller
    (PERMISSION_DENIED)."""

    exit_code = 6


class BusyError(DellmError):
    """The coordinator is answering as many queries as it allows, in total or from this client
    (RESOURCE_EXHAUSTED): retry shortly."""

    exit_code = 7


class UnsupportedError(DellmError):
    """The coordinator does not serve this call: an older version (UNIMPLEMENTED)."""

    exit_code = 8


_BY_CODE: dict[grpc.StatusCode, type[DellmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidQueryError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.UNAUTHENTICATED: AuthError,
    grpc.StatusCode.PERMISSION_DENIED: AuthError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BusyError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
}
_TLS_FAILURE = ("handshake", "ssl", "certificate", "tls")


def from_rpc_error(exc: grpc.aio.AioRpcError, address: str) -> DellmError:
    code = exc.code()
    details = exc.details() or code.name
    lowered = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE and any(word in lowered for word in _TLS_FAILURE):
        details = (f"the TLS handshake with {address} failed ({details}); check --tls-ca (the CA that signed the "
                   "coordinator's certificate, which must name the address you dial) and, when the coordinator "
                   "requires client certificates, --tls-cert and --tls-key")
    elif code is grpc.StatusCode.UNAVAILABLE and "socket closed" in lowered:
        # the TCP connection was accepted, then closed before gRPC spoke: a TLS server refusing a
        # plaintext client or one without an acceptable client certificate (or a server going away)
        details = (f"{address} closed the connection before answering ({details}); if the coordinator serves TLS, "
                   "pass --tls-ca, and if it requires client certificates, --tls-cert and --tls-key signed by its CA")
    elif code is grpc.StatusCode.UNAVAILABLE and ("connect" in lowered or "refused" in lowered):
        details = f"no coordinator answering at {address} ({details}); start one with `dellm-coordinator`"
    return _BY_CODE.get(code, DellmError)(f"{code.name}: {details}")
