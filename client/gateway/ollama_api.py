"""The Ollama-compatible API: ``/api/chat`` and ``/api/generate`` (NDJSON streams, on by default as in
Ollama), ``/api/tags``, ``/api/version`` and ``/api/show``.

As on the OpenAI side, a chat's question is its last user message and the DELLM extras ride in a
``dellm`` field of the last line. Errors are Ollama's ``{"error": "..."}`` with the HTTP status.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from dellm.client.gateway.errors import ApiError
from dellm.client.gateway.openai_api import gateway_of
from dellm.client.gateway.session import AskSession
from dellm.protos import version_line

NDJSON = "application/x-ndjson"


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str = ""
    images: list[str] | None = None


class OllamaChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # options, format, keep_alive ...: accepted, left to the coordinator

    model: str
    messages: list[OllamaMessage] = Field(min_length=1)
    stream: bool = True


class OllamaGenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str = ""
    stream: bool = True
    images: list[str] | None = None


class OllamaShowRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = ""
    name: str = ""  # older clients send the model's name here


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def chat_question(messages: list[OllamaMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            if message.images:
                raise ApiError(400, "images are not supported: the network answers text questions")
            return message.content
    raise ApiError(400, "the messages hold no user message: nothing to answer")


def stats(session: AskSession, started: float) -> dict[str, Any]:
    """Ollama's closing figures: durations in nanoseconds, token counts as DELLM counts them."""
    total_ns = int((time.perf_counter() - started) * 1e9)
    return {"done": True, "done_reason": "stop", "total_duration": total_ns, "load_duration": 0,
            "prompt_eval_count": session.prompt_tokens, "prompt_eval_duration": 0,
            "eval_count": session.completion_tokens, "eval_duration": total_ns, "dellm": session.extension()}


async def ndjson(session: AskSession, line: Callable[[str], dict[str, Any]], started: float) -> AsyncIterator[bytes]:
    """One JSON object a line: the answer's text as it comes, then the closing line (or an error line)."""
    try:
        async for text in session.answer_deltas():
            yield (json.dumps({**line(text), "done": False}, ensure_ascii=False) + "\n").encode()
    except ApiError as exc:
        yield (json.dumps(exc.ollama_body()) + "\n").encode()
        return
    yield (json.dumps({**line(""), **stats(session, started)}, ensure_ascii=False) + "\n").encode()


def ollama_router() -> APIRouter:
    router = APIRouter(prefix="/api")

    @router.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse({"version": version_line("dellm").split(" ", 1)[1]})

    @router.get("/tags")
    async def tags(request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        name = f"{gateway.config.model_name}:latest"
        families = sorted({n.info.model for n in gateway.board.nodes if n.state == "up"})
        return JSONResponse({"models": [{
            "name": name, "model": name, "modified_at": now_iso(), "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "dellm", "family": "dellm", "families": families,
                        "parameter_size": "", "quantization_level": ""}}]})

    @router.post("/show")
    async def show(body: OllamaShowRequest, request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        gateway.check_model(body.model or body.name)
        return JSONResponse({"modelfile": "", "parameters": "", "template": "",
                             "details": {"format": "dellm", "family": "dellm"}, "capabilities": ["completion"]})

    @router.post("/chat", response_model=None)
    async def chat(body: OllamaChatRequest, request: Request) -> JSONResponse | StreamingResponse:
        gateway = gateway_of(request)
        gateway.check_model(body.model)
        started = time.perf_counter()
        session = gateway.session(chat_question(body.messages), "ollama-chat")
        await session.open()

        def line(text: str) -> dict[str, Any]:
            return {"model": body.model, "created_at": now_iso(), "message": {"role": "assistant", "content": text}}

        if body.stream:
            return StreamingResponse(ndjson(session, line, started), media_type=NDJSON,
                                     background=BackgroundTask(session.aclose))
        answer = await session.answer()
        return JSONResponse({**line(answer), **stats(session, started)})

    @router.post("/generate", response_model=None)
    async def generate(body: OllamaGenerateRequest, request: Request) -> JSONResponse | StreamingResponse:
        gateway = gateway_of(request)
        gateway.check_model(body.model)
        if body.images:
            raise ApiError(400, "images are not supported: the network answers text questions")

        def line(text: str) -> dict[str, Any]:
            return {"model": body.model, "created_at": now_iso(), "response": text}

        if not body.prompt:  # Ollama's "load the model" request: the network is always loaded
            return JSONResponse({**line(""), "done": True, "done_reason": "load"})
        started = time.perf_counter()
        session = gateway.session(body.prompt, "ollama-generate")
        await session.open()
        if body.stream:
            return StreamingResponse(ndjson(session, line, started), media_type=NDJSON,
                                     background=BackgroundTask(session.aclose))
        answer = await session.answer()
        return JSONResponse({**line(answer), **stats(session, started)})

    return router
