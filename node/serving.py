"""What every DELLM gRPC process shares: health, reflection, a signal-driven lifecycle, and security.

Security is one frozen :class:`SecurityConfig` per process, passed to whatever serves or dials:

- a cluster token, sent by every channel from :func:`channel` as call metadata (``x-dellm-token``)
  and checked by :class:`TokenInterceptor` on every server (health and reflection stay open, so load
  balancers and ``grpcurl list`` work without it);
- TLS: a server with a certificate serves TLS, and with a CA it requires client certificates signed
  by it (mutual TLS); every channel presents the same certificate and verifies servers with the CA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import signal
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)

TOKEN_METADATA_KEY = "x-dellm-token"
# Services anyone may call: load balancers check health, and `grpcurl list` uses reflection.
OPEN_SERVICES = frozenset({
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
MISSING_TOKEN = "this cluster requires a token: pass --token or set DELLM_TOKEN"
INVALID_TOKEN = "the token is not valid"


class SecurityError(ValueError):
    """Security settings that cannot work: a malformed token, an unreadable or mismatched PEM file."""


def check_token(token: str) -> None:
    """A token must be visible ASCII: gRPC metadata cannot carry anything else (never echoes the token)."""
    if not token:
        raise SecurityError("the token is empty")
    if not all("!" <= ch <= "~" for ch in token):
        raise SecurityError(f"the token ({len(token)} characters) must be visible ASCII: no spaces, "
                            "line breaks or non-ASCII letters (for example `python -c 'import secrets; "
                            "print(secrets.token_urlsafe(32))'`)")


def read_token_file(path: Path) -> str:
    """The token in ``path``, without the surrounding whitespace (the newline an editor adds)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise SecurityError(f"the token file {path} is empty")
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            log.warning("the token file %s can be read by other users (chmod 600 it)", path)
    return token


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of a SecurityConfig's files, read and checked once."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None


@dataclass(frozen=True)
class SecurityConfig:
    """How one process authenticates and encrypts; the default is today's plaintext, open cluster."""

    token: str | None = field(default=None, repr=False)  # cluster token; None: none required, none sent
    tls_cert: Path | None = None  # PEM certificate: served by servers, presented by channels (mutual TLS)
    tls_key: Path | None = None  # its PEM private key
    tls_ca: Path | None = None  # PEM CA: channels verify servers with it; servers require client certs signed by it
    client_auth: bool = True  # a server with tls_ca requires client certificates (False: TLS, but no client certs)

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SecurityError("a TLS certificate needs its key, and a key its certificate")

    @property
    def token_required(self) -> bool:
        return self.token is not None

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def dials_tls(self) -> bool:
        return self.tls_cert is not None or self.tls_ca is not None

    @property
    def requires_client_cert(self) -> bool:
        return self.serves_tls and self.tls_ca is not None and self.client_auth

    def describe(self) -> str:
        """For logs and readiness lines, e.g. ``token, mutual TLS`` (never the token)."""
        tls = "mutual TLS" if self.requires_client_cert else "TLS" if self.serves_tls else "plaintext"
        return f"{'token' if self.token_required else 'no token'}, {tls}"

    @functools.cached_property
    def files(self) -> TlsFiles:
        """Read the PEM files, checking that each parses and that the key belongs to the certificate."""
        return read_tls_files(self.tls_cert, self.tls_key, self.tls_ca)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if not self.serves_tls:
            return None
        files = self.files
        assert files.cert is not None and files.key is not None
        require = self.requires_client_cert
        return grpc.ssl_server_credentials([(files.key, files.cert)], root_certificates=files.ca if require else None,
                                           require_client_auth=require)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        if not self.dials_tls:
            return None
        files = self.files
        return grpc.ssl_channel_credentials(root_certificates=files.ca, private_key=files.key,
                                            certificate_chain=files.cert)


def read_tls_files(cert: Path | None, key: Path | None, ca: Path | None) -> TlsFiles:
    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SecurityError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN " not in data:
            raise SecurityError(f"the TLS {what} {path} is not a PEM file")
        return data

    files = TlsFiles(read(cert, "certificate"), read(key, "key"), read(ca, "CA certificate"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise SecurityError(f"the TLS key {key} does not belong to the certificate {cert}, or one of them "
                                f"is not valid ({exc.reason or exc})") from exc
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except ssl.SSLError as exc:
            raise SecurityError(f"the TLS CA certificate {ca} is not valid ({exc.reason or exc})") from exc
    return files


def add_security_arguments(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """Declare the security flags every DELLM command shares (the CLIs parse them)."""
    group = parser.add_argument_group("security")
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument("--token", default=None,
                        help="cluster token (visible ASCII; default: $DELLM_TOKEN). A flag shows in `ps`: prefer "
                             "--token-file or the environment")
    tokens.add_argument("--token-file", type=Path, default=None, metavar="PATH",
                        help="file holding the cluster token (surrounding whitespace ignored)")
    role = "served, and presented to the servers this process calls" if server else "presented to the coordinator"
    group.add_argument("--tls-cert", type=Path, default=None, metavar="PEM", help=f"TLS certificate, {role}")
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="private key of --tls-cert")
    group.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                       help="CA certificate that servers are verified with" +
                            (", and that client certificates must be signed by (mutual TLS)" if server else ""))
    if server:
        group.add_argument("--tls-client-auth", action=argparse.BooleanOptionalAction, default=True,
                           help="with --tls-ca, require client certificates (default: on)")


def security_from_arguments(args: argparse.Namespace, env_token: str | None, *, server: bool) -> SecurityConfig:
    """The SecurityConfig the flags of :func:`add_security_arguments` ask for, its PEM files read and
    checked; raises SecurityError saying what is wrong (never echoing the token)."""
    if args.token is not None:
        token: str | None = args.token
    elif args.token_file is not None:
        token = read_token_file(args.token_file)
    else:
        token = env_token or None
    if server and args.tls_ca is not None and args.tls_cert is None:
        raise SecurityError("--tls-ca needs --tls-cert and --tls-key: the server serves TLS with them")
    security = SecurityConfig(token=token, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                              client_auth=getattr(args, "tls_client_auth", True))
    security.files  # noqa: B018 (read and check the PEM files now: a bad one stops the command at once)
    return security


# --- the cluster token ----------------------------------------------------------------------------------------


def token_digest(token: str | bytes) -> bytes:
    raw = token if isinstance(token, bytes) else token.encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).digest()


def token_refusal(metadata: Iterable[tuple[str, str | bytes]] | None, expected_digest: bytes) -> str | None:
    """None when the call carries exactly one ``x-dellm-token`` equal to the cluster token, else why not.

    The SHA-256 digests are compared with ``hmac.compare_digest``, so the time taken says nothing
    about the token, its length included.
    """
    given = [value for key, value in metadata or () if key == TOKEN_METADATA_KEY]
    if not given or (len(given) == 1 and not given[0]):
        return MISSING_TOKEN
    if len(given) > 1:  # ambiguous: one request must not try several guesses
        return INVALID_TOKEN
    return None if hmac.compare_digest(token_digest(given[0]), expected_digest) else INVALID_TOKEN


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
    """A gRPC server with the shared options, checking the cluster token when ``security`` has one."""
    token = security.token if security is not None else None
    interceptors = [TokenInterceptor(token)] if token else None
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


def bind(server: grpc.aio.Server, listen: str, security: SecurityConfig | None = None) -> str:
    """Bind ``host:port`` (port 0 picks a free one), with TLS when ``security`` has a certificate,
    and return the address actually bound."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"listen address must be HOST:PORT, got {listen!r}")
    credentials = security.server_credentials() if security is not None else None
    bound = server.add_insecure_port(listen) if credentials is None else server.add_secure_port(listen, credentials)
    if bound == 0:
        raise OSError(f"could not listen on {listen} (address in use or not available)")
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
