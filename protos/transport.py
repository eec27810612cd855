"""How DELLM processes talk: gRPC server and channel factories, the token interceptors, health and
reflection, binding, peer addresses and the signal-driven lifecycle. Every process dials and serves
through these, so no side imports the other to talk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dellm.protos.malformed import MalformedRequestInterceptor
from dellm.protos.security import MISSING_TOKEN, TOKEN_METADATA_KEY, SecurityConfig, token_digest, token_refusal

log = logging.getLogger(__name__)

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # grpc turns SO_REUSEPORT on by default: a second server on a busy port would start and split the
    # clients with the first. Off, the port is refused (ListenError) and the second server says so.
    ("grpc.so_reuseport", 0),
)
DEFAULT_PORT = 50050  # the coordinator's port when an address gives none

# Services anyone may call: load balancers check health, and `grpcurl list` uses reflection.
OPEN_SERVICES = frozenset({
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


def _service_of(method: str) -> str:
    """``/dellm.v1.NodeService/Generate`` -> ``dellm.v1.NodeService``."""
    return method.lstrip("/").split("/", 1)[0]


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call without the cluster token with UNAUTHENTICATED, except to ``open_services``."""

    def __init__(self, token: str, open_services: frozenset[str] = OPEN_SERVICES) -> None:
        self._digest = token_digest(token)
        self._open = open_services

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or _service_of(method) in self._open:
            return handler
        why = token_refusal(handler_call_details.invocation_metadata, self._digest)  # type: ignore[attr-defined]
        return handler if why is None else refusing_handler(handler, method, why)


def refusing_handler(handler: grpc.RpcMethodHandler, method: str, why: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only answers UNAUTHENTICATED, saying ``why``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log.warning("refused %s from %s: %s", method, context.peer(),
                    "no token" if why == MISSING_TOKEN else "wrong token")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    serializers = {"request_deserializer": handler.request_deserializer,
                   "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **serializers)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    return grpc.unary_unary_rpc_method_handler(refuse, **serializers)


class _TokenCall:
    """Adds the cluster token to the metadata of a call."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata[TOKEN_METADATA_KEY] = self._token
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]


class _TokenUnaryUnary(_TokenCall, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _TokenUnaryStream(_TokenCall, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _TokenStreamUnary(_TokenCall, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                     request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _TokenStreamStream(_TokenCall, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails,
                                      request_iterator: Any) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send ``token`` on every call of a channel. One per kind of call: a
    grpc.aio channel files an interceptor under the first kind it implements only."""
    return [kind(token) for kind in (_TokenUnaryUnary, _TokenUnaryStream, _TokenStreamUnary, _TokenStreamStream)]


# --- servers and channels -------------------------------------------------------------------------------------


def new_server(security: SecurityConfig | None = None) -> grpc.aio.Server:
    """A gRPC server with the shared options, checking the cluster token when ``security`` has one (before
    anything else), and refusing requests that do not parse with INVALID_ARGUMENT (protos/malformed.py)."""
    token = security.token if security is not None else None
    interceptors: list[grpc.aio.ServerInterceptor] = [TokenInterceptor(token)] if token else []
    interceptors.append(MalformedRequestInterceptor(peer_of=lambda peer: peer_host(peer) or peer))
    return grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)


def channel(address: str, security: SecurityConfig | None = None,
            options: Sequence[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """The one way any DELLM process dials another: TLS when ``security`` has a CA or a certificate,
    and the cluster token on every call when it has one; plaintext and open otherwise."""
    security = security or SecurityConfig()
    interceptors = token_interceptors(security.token) if security.token else None
    credentials = security.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def add_health_and_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 (each service SERVING) and server reflection for ``service_names``."""
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return health_servicer


async def set_serving(health_servicer: health.aio.HealthServicer, service_names: Sequence[str], up: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


class ListenError(OSError):
    """The server cannot listen where asked: the port is taken (by another DELLM process, say) or the
    address is not this machine's."""


def with_default_port(address: str, port: int = DEFAULT_PORT) -> str:
    """``host`` -> ``host:50050``; ``host:port`` unchanged; IPv6 as ``[::1]`` or ``[::1]:port`` (a bare
    ``::1`` gets brackets). ValueError for a port that is not a number from 1 to 65535."""
    address = address.strip()
    if not address:
        raise ValueError("the address is empty; give HOST or HOST:PORT")
    if address.startswith("["):
        host, _, rest = address.partition("]")
        if not rest:
            return f"{host}]:{port}"
        given = rest.removeprefix(":")
        host += "]"
    elif address.count(":") > 1:  # a bare IPv6 address
        return f"[{address}]:{port}"
    else:
        host, sep, given = address.partition(":")
        if not sep:
            return f"{host}:{port}"
    if not given.isdigit() or not 0 < int(given) < 65536 or not host:
        raise ValueError(f"{address!r} is not HOST:PORT (a port from 1 to 65535)")
    return f"{host}:{given}"


def check_port_free(host: str, port: int) -> None:
    """Raise ListenError, saying which, when ``host:port`` is taken or not this machine's: found with a plain
    socket first, so that the message is ours alone (grpc's core would print its own error line too)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"could not listen on {host}:{port}: {host!r} does not resolve ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ListenError(f"could not listen on {host}:{port}: the port is in use (is another DELLM "
                                  "process serving there?); give another --listen HOST:PORT") from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ListenError(f"could not listen on {host}:{port}: {host} is not an address of this machine; "
                                  "give another --listen HOST:PORT") from exc
            # anything else (permissions for a low port, say): grpc's own bind below says what it says


def bind(server: grpc.aio.Server, listen: str, security: SecurityConfig | None = None) -> str:
    """Bind ``host:port`` (port 0 picks a free one), with TLS when ``security`` has a certificate,
    and return the address actually bound."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    check_port_free(host, int(port))
    credentials = security.server_credentials() if security is not None else None
    try:  # grpc says 0, or raises RuntimeError ("Failed to bind ..."), depending on its version
        bound = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen,
                                                                                                     credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ListenError(f"could not listen on {listen}: the port is in use (is another DELLM process serving "
                          "there?) or the address is not this machine's; give another --listen HOST:PORT")
    return f"{host}:{bound}"


def normalized_ip(host: str) -> str | None:
    """``host`` as an IP address in canonical form (IPv4-mapped IPv6 as IPv4, no zone); None if it is none."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def peer_host(peer: str) -> str | None:
    """The IP address in a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, or
    percent-encoded), normalized by :func:`normalized_ip`; None for peers without one (unix sockets)."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return normalized_ip(rest.rpartition(":")[0])


async def wait_for_signal(stop: asyncio.Event | None = None) -> None:
    """Return on SIGTERM or SIGINT (or when ``stop`` is set)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
