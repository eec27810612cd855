"""Errors the gateway answers with, in the formats clients expect.

``ApiError`` carries an HTTP status, an OpenAI error ``type`` and ``code``, and a message. Client
errors from the coordinator (:mod:`dellm.client.errors`) become ApiErrors here, in one table:

    InvalidQueryError   400 invalid_request_error
    AuthError           502 upstream_auth_error  (the gateway's own token towards the coordinator is wrong)
    BusyError           429 rate_limit_error     (the coordinator is answering as many queries as it allows)
    UnavailableError    503 service_unavailable  (no coordinator, or no node can answer)
    NotFoundError       404 not_found_error
    DeadlineError       504 timeout
    anything else       502 upstream_error

OpenAI routes answer ``{"error": {"message", "type", "param", "code"}}``; Ollama routes ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

from dellm.client.errors import (
    AuthError,
    BusyError,
    DeadlineError,
    DellmError,
    InvalidQueryError,
    NotFoundError,
    UnavailableError,
)


class ApiError(Exception):
    """An HTTP error answer: ``status``, OpenAI ``kind`` (its error "type") and ``code``, ``message``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param

    def openai_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def ollama_body(self) -> dict[str, Any]:
        return {"error": self.message}


_BY_CLIENT_ERROR: tuple[tuple[type[DellmError], int, str], ...] = (
    (InvalidQueryError, 400, "invalid_request_error"),
    (AuthError, 502, "upstream_auth_error"),
    (BusyError, 429, "rate_limit_error"),
    (UnavailableError, 503, "service_unavailable"),
    (NotFoundError, 404, "not_found_error"),
    (DeadlineError, 504, "timeout"),
)


def from_client_error(exc: DellmError) -> ApiError:
    """The HTTP answer to a client error from the coordinator."""
    for kind, status, name in _BY_CLIENT_ERROR:
        if isinstance(exc, kind):
            return ApiError(status, str(exc), name, code=name)
    return ApiError(502, str(exc), "upstream_error", code="upstream_error")


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "invalid_request_error", code="invalid_api_key")


def outcome_of(exc: BaseException) -> str:
    """A short label for how a query ended, for the queries-by-outcome metric."""
    if isinstance(exc, ApiError):
        return {400: "invalid", 401: "unauthorized", 404: "not_found", 429: "busy", 503: "unavailable",
                504: "timeout"}.get(exc.status, "failed")
    return "failed"
