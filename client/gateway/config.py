"""The gateway's settings: one frozen dataclass with commented defaults; only the CLI reads flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from dellm.client.api import ClientConfig

DEFAULT_LISTEN = "127.0.0.1:8080"
MODEL_NAME = "dellm"  # what /v1/models and /api/tags list: the network answers as one model


@dataclass(frozen=True)
class GatewayConfig:
    coordinator: str = "127.0.0.1:50050"  # HOST:PORT of the coordinator this gateway is a client of
    listen: str = DEFAULT_LISTEN  # loopback by default: exposing it is a choice, made with --listen
    # Bearer token HTTP clients must send; the cluster token when one is set (None: no auth asked).
    api_token: str | None = None
    client: ClientConfig = field(default_factory=ClientConfig)  # deadlines, TLS and token towards the coordinator
    model_name: str = MODEL_NAME
    max_query_chars: int = 16_000  # longer request text is refused with 400 before it reaches the coordinator
    max_body_bytes: int = 1 << 20  # a bigger request body is refused with 413 before it is read whole
    history_size: int = 50  # queries the status page keeps
    node_poll_s: float = 2.0  # ListNodes every so often: node gauges, the fitness plot, the status page
    fitness_points: int = 720  # samples of fitness kept per node (24 minutes at the default poll)
    sse_ping_s: float = 15.0  # keep-alive comments on idle SSE streams
