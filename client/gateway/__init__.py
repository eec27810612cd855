"""``dellm gateway``: the network behind the HTTP APIs people already use.

An HTTP server (FastAPI on uvicorn, streaming with sse-starlette, as llama-cpp-python's server does)
that is a gRPC client of the coordinator through :mod:`dellm.client.api`, so that Open WebUI,
LiteLLM, LangChain, the ``openai`` SDK and the ``ollama`` client work with DELLM unchanged.

It is a client command (``dellm gateway``) rather than a coordinator flag: it runs wherever the users
are, needs no access to the registry, keeps the web stack out of the coordinator, and serves several
coordinators' users the same way any ``dellm ask`` does. One module per idea:

    config.py        GatewayConfig: addresses, limits, poll intervals (one dataclass, commented defaults)
    errors.py        ApiError and the translation of client errors into HTTP codes, OpenAI and Ollama bodies
    session.py       AskSession: one query through the coordinator, its answer text and its DELLM extras
    openai_api.py    /v1/chat/completions, /v1/completions, /v1/models, /v1/feedback
    ollama_api.py    /api/chat, /api/generate, /api/tags, /api/version
    metrics.py       Prometheus metrics at /metrics (queries, stages, nodes)
    status.py        StatusBoard: node snapshots, fitness over time, the last queries; / and its SSE feed
    status_page.html the page itself: self-contained, no CDN
    app.py           create_app (routes, auth, lifespan) and serve_gateway (socket, uvicorn)
"""

from __future__ import annotations

from dellm.client.gateway.app import create_app, serve_gateway
from dellm.client.gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app", "serve_gateway"]
