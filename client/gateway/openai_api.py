"""The OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, and
``/v1/feedback`` (DELLM's own: a user's verdict on a query).

The network answers one question at a time: a chat request's question is its last user message
(earlier turns and system messages are not sent on; the coordinator plans from the question alone).
Sampling parameters (temperature, max_tokens, ...) are accepted and left to the coordinator, which sets
them per chunk; ``n`` other than 1 is refused. Every answer carries the DELLM extras in a ``dellm`` field
that standard clients ignore. Streams are server-sent events ending with ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from dellm.client.errors import AuthError, DellmError
from dellm.client.gateway.errors import ApiError, from_client_error
from dellm.client.gateway.runtime import Gateway
from dellm.client.gateway.session import AskSession
from dellm.client.render import message_dict


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI parameters are accepted and left to the coordinator

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    n: int = 1
    stream_options: dict[str, Any] | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str | list[str]
    stream: bool = False
    n: int = 1
    stream_options: dict[str, Any] | None = None


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1, max_length=200)
    correct: bool
    answer: str = Field(default="", max_length=4000)
    feedback_token: str = Field(default="", max_length=200)  # the answer's dellm.feedback_token: the asker's proof


def text_of(content: str | list[dict[str, Any]] | None) -> str:
    """A message's text: a string, or the text parts of a list of content parts (other parts are refused)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"only text content parts are supported, got a {part.get('type')!r} part",
                           param="messages")
        texts.append(part["text"])
    return "\n".join(texts)


def question_of(messages: list[ChatMessage]) -> str:
    """The question a chat asks: its last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return text_of(message.content)
    raise ApiError(400, "the messages hold no user message: nothing to answer", param="messages")


def check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, f"n must be 1: the network gives one answer per question, got n={n}", param="n")


def usage(session: AskSession) -> dict[str, int]:
    """Tokens as DELLM counts them: the question's as planned, and every token any node generated."""
    prompt, completion = session.prompt_tokens, session.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any]) -> dict[str, str]:
    return {"data": json.dumps(data, ensure_ascii=False)}


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def stream_events(session: AskSession, chunk: Any, final_chunk: Any,
                        include_usage: bool) -> AsyncIterator[dict[str, str]]:
    """The SSE body of a streamed completion: ``chunk(text)`` per delta, ``final_chunk()`` with the finish reason
    and the DELLM extras, usage when asked, then ``[DONE]``. A failure midway is sent as an OpenAI error event."""
    try:
        async for text in session.answer_deltas():
            yield sse(chunk(text))
    except ApiError as exc:
        yield sse(exc.openai_body())
        yield {"data": "[DONE]"}
        return
    yield sse(final_chunk())
    if include_usage:
        yield sse({**chunk(None), "choices": [], "usage": usage(session)})
    yield {"data": "[DONE]"}


def openai_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models")
    async def models(request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        return JSONResponse({"object": "list", "data": [
            {"id": gateway.config.model_name, "object": "model", "created": 0, "owned_by": "dellm",
             "dellm": {"nodes": [{"name": n.info.name, "model": n.info.model, "state": n.state}
                                 for n in gateway.board.nodes]}}]})

    @router.get("/models/{model}")
    async def model(model: str, request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        gateway.check_model(model)
        return JSONResponse({"id": model, "object": "model", "created": 0, "owned_by": "dellm"})

    @router.post("/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> JSONResponse | EventSourceResponse:
        gateway = gateway_of(request)
        gateway.check_model(body.model)
        check_n(body.n)
        session = gateway.session(question_of(body.messages), "openai-chat")
        await session.open()
        created = int(time.time())
        ident = f"chatcmpl-{session.query_id}"

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if role:
                delta["role"] = "assistant"
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        if body.stream:
            async def body_events() -> AsyncIterator[dict[str, str]]:
                yield sse(chunk("", role=True))
                async for event in stream_events(session, chunk,
                                                 lambda: {**chunk(None, "stop"), "dellm": session.extension()},
                                                 bool((body.stream_options or {}).get("include_usage"))):
                    yield event

            return EventSourceResponse(body_events(), ping=gateway.config.sse_ping_s,
                                       background=BackgroundTask(session.aclose))
        answer = await session.answer()
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage(session), "dellm": session.extension()})

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
        gateway = gateway_of(request)
        gateway.check_model(body.model)
        check_n(body.n)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, f"prompt must be one string: the network answers one question per request, "
                                f"got {len(prompts)}", param="prompt")
        session = gateway.session(prompts[0], "openai-completions")
        await session.open()
        created = int(time.time())
        ident = f"cmpl-{session.query_id}"

        def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
            return {"id": ident, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}]}

        if body.stream:
            return EventSourceResponse(
                stream_events(session, chunk, lambda: {**chunk(None, "stop"), "dellm": session.extension()},
                              bool((body.stream_options or {}).get("include_usage"))),
                ping=gateway.config.sse_ping_s, background=BackgroundTask(session.aclose))
        answer = await session.answer()
        return JSONResponse({**chunk(answer, "stop"), "usage": usage(session), "dellm": session.extension()})

    @router.post("/feedback")
    async def feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
        gateway = gateway_of(request)
        try:
            rewards = await gateway.client.feedback(body.query_id, body.correct, body.answer, body.feedback_token)
        except AuthError as exc:  # the coordinator refused: not the asker's feedback token (the gateway's own is fine)
            raise ApiError(403, str(exc), "permission_error", code="permission_denied", param="feedback_token") from exc
        except DellmError as exc:
            raise from_client_error(exc) from exc
        rows = [message_dict(r) for r in rewards]
        for row in rows:  # the Watch feed carries queries, not later verdicts: count a user's here
            gateway.metrics.verdicts.labels(row.get("source") or "user",
                                            row.get("verdict", "VERDICT_UNSPECIFIED")).inc()
        return JSONResponse({"object": "dellm.feedback", "query_id": body.query_id, "correct": body.correct,
                             "rewards": rows})

    return router
