"""Requests that are not the message they claim to be: answered INVALID_ARGUMENT, logged once per peer a minute.

gRPC parses a request before the servicer sees it; a request that does not parse (random bytes, a
truncated message) made grpc log a 720-byte traceback each, and the caller got UNKNOWN. The server
interceptor here takes the parsing over: a request that does not parse is refused with
INVALID_ARGUMENT ("malformed request"), and the server logs one line per peer a minute, counting the
ones in between, with no traceback. Streaming requests are left to gRPC (no DELLM method takes one).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

REPORT_EVERY_S = 60.0
MAX_PEERS = 4096  # peers remembered for the once-a-minute report


class MalformedReports:
    """Says "peer P sent malformed M requests" at most once per peer per ``every_s``, counting the rest."""

    def __init__(self, every_s: float = REPORT_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every_s, self._clock = every_s, clock
        self._peers: dict[str, tuple[float, int]] = {}  # peer -> (last report, unreported since)

    def report(self, peer: str, method: str, why: str) -> bool:
        """Count one malformed request; True when it was logged."""
        now = self._clock()
        last, unreported = self._peers.get(peer, (float("-inf"), 0))
        if now - last < self._every_s:
            self._peers[peer] = (last, unreported + 1)
            return False
        if len(self._peers) >= MAX_PEERS:
            self._peers = {p: v for p, v in self._peers.items() if now - v[0] < self._every_s}
        self._peers[peer] = (now, 0)
        more = f" (and {unreported} more since the last report)" if unreported else ""
        log.warning("malformed %s request from %s%s: %s", method, peer, more, why[:200])
        return True


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Parses unary requests itself, so that a request that does not parse is refused cleanly."""

    def __init__(self, reports: MalformedReports | None = None,
                 peer_of: Callable[[str], str] = lambda peer: peer) -> None:
        self.reports = reports or MalformedReports()
        self._peer_of = peer_of  # what "one peer" is: its host, not each connection's port

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        parse = handler.request_deserializer
        reports, peer_of = self.reports, self._peer_of

        async def parsed(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return parse(raw)
            except Exception as exc:  # DecodeError, or anything else a parser raises on bytes
                reports.report(peer_of(context.peer()), method.rsplit("/", 1)[-1], f"{type(exc).__name__}: {exc}")
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"malformed request: not a valid {method} request message")

        if handler.response_streaming:
            stream = handler.unary_stream
            if inspect.isasyncgenfunction(stream):
                async def streaming(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    request = await parsed(raw, context)
                    async for response in stream(request, context):
                        yield response

                return grpc.unary_stream_rpc_method_handler(
                    streaming, response_serializer=handler.response_serializer)

            async def writing(raw: bytes, context: grpc.aio.ServicerContext) -> Any:  # writes with context.write
                return await stream(await parsed(raw, context), context)

            return grpc.unary_stream_rpc_method_handler(writing, response_serializer=handler.response_serializer)

        unary = handler.unary_unary

        async def answering(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            return await unary(await parsed(raw, context), context)

        return grpc.unary_unary_rpc_method_handler(answering, response_serializer=handler.response_serializer)
