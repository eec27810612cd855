"""The gateway's ASGI app (FastAPI) and its server (uvicorn on a socket we bind ourselves).

Auth: when the gateway has a cluster token, every route but ``/healthz`` wants ``Authorization: Bearer
<token>`` and answers 401 without it; the status page, which a browser opens by URL, may give it as
``?token=`` on GET requests instead. Errors come out in the format of the API that was called.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dellm.client.api import DellmClient
from dellm.client.gateway.config import GatewayConfig
from dellm.client.gateway.errors import ApiError, unauthorized
from dellm.client.gateway.metrics import CONTENT_TYPE
from dellm.client.gateway.ollama_api import ollama_router
from dellm.client.gateway.openai_api import openai_router
from dellm.client.gateway.runtime import Gateway
from dellm.client.gateway.status import status_router
from dellm.protos.transport import ListenError, wait_for_signal

log = logging.getLogger(__name__)


def error_response(request: Request, error: ApiError) -> JSONResponse:
    body = error.ollama_body() if request.url.path.startswith("/api/") else error.openai_body()
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers)


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first few problems of a request body in one sentence, and the first field at fault."""
    parts, param = [], None
    for problem in exc.errors()[:3]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        param = param or where or None
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts or ["the body could not be read"]), param


class BodyTooLarge(StarletteHTTPException):
    """A request body past the limit, found while it was being read (an HTTPException, so that FastAPI's body
    parsing lets it through as it is)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 in the called API's error format, from its
    Content-Length before anything is read, or as soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self._limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._limit:
                raise BodyTooLarge(self._limit)
            return message

        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counted, watched_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(413, str(BodyTooLarge(self._limit).detail), code="request_too_large")
        await error_response(Request(scope, receive), error)(scope, receive, send)


def require_token(request: Request) -> None:
    """401 unless the request carries the gateway's token (any request when it has none)."""
    expected: str | None = request.app.state.gateway.config.api_token
    if not expected:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        given = request.query_params.get("token", "") if request.method == "GET" else ""
        if not given:
            raise unauthorized("this gateway wants the cluster token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise unauthorized("the bearer token is not this cluster's token")


def create_app(config: GatewayConfig, client: DellmClient | None = None) -> FastAPI:
    gateway = Gateway(config, client)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="DELLM gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(request, ApiError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        code = "request_too_large" if exc.status_code == 413 else None
        return error_response(request, ApiError(exc.status_code, message, kind, code=code))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "coordinator": gateway.client.address,
                             "coordinator_error": gateway.board.coordinator_error})

    guarded = [Depends(require_token)]

    @app.get("/metrics", include_in_schema=False, dependencies=guarded)
    async def metrics() -> Response:
        await gateway.board.refresh()  # node figures as of this scrape
        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(openai_router(), dependencies=guarded)
    app.include_router(ollama_router(), dependencies=guarded)
    app.include_router(status_router(), dependencies=guarded)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    return app


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError saying what is wrong."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be HOST:PORT (port 0-65535), got {listen!r}")
    return host, int(port)


def listen_socket(listen: str) -> socket.socket:
    """A bound TCP socket for ``listen``, without SO_REUSEPORT: a port another server holds is refused
    (ListenError, saying why) instead of being shared with it."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {listen}: {host!r} does not resolve ({exc.strerror})") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = ("the port is in use: is another server using it?" if exc.errno == errno.EADDRINUSE
               else f"{host} is not an address of this machine" if exc.errno == errno.EADDRNOTAVAIL
               else exc.strerror or str(exc))
        raise ListenError(f"cannot listen on {listen}: {why}; give another --listen HOST:PORT") from exc
    sock.set_inheritable(True)
    return sock


class GatewayServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: :func:`serve_gateway` stops it on SIGTERM/SIGINT
    the way every DELLM server stops (and exits 0), and tests start it without touching signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningGateway:
    server: GatewayServer
    task: asyncio.Task[None]
    address: str  # host:port actually bound
    gateway: Gateway

    @property
    def url(self) -> str:
        host, _, port = self.address.rpartition(":")
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    async def stop(self) -> None:
        self.gateway.board.close_streams()  # status pages' SSE streams end now, not at the grace period's end
        self.server.should_exit = True
        await self.task


async def start_gateway(config: GatewayConfig, client: DellmClient | None = None) -> RunningGateway:
    """Bind ``config.listen`` (port 0: any free port), start serving, and return once it accepts requests."""
    sock = listen_socket(config.listen)
    host, port = sock.getsockname()[:2]
    app = create_app(config, client)
    server = GatewayServer(uvicorn.Config(app, log_level="warning", access_log=False,
                                           lifespan="on", timeout_graceful_shutdown=5))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="gateway")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises what stopped it
            raise OSError(f"the gateway on {config.listen} stopped while starting")
        await asyncio.sleep(0.01)
    return RunningGateway(server, task, f"{host}:{port}", app.state.gateway)


async def serve_gateway(config: GatewayConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then let requests in flight finish for up to 5 s."""
    running = await start_gateway(config)
    print(f"dellm gateway listening on {running.url} (coordinator {config.coordinator})", flush=True)
    signalled = asyncio.create_task(wait_for_signal(stop))
    try:
        await asyncio.wait({signalled, running.task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        if not running.task.done():
            log.info("shutting down; letting requests in flight finish")
        await running.stop()
