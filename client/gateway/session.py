"""One query through the coordinator, as the HTTP routes see it.

:class:`AskSession` starts the query and waits for its first event before a route answers, so that a
bad query, a busy coordinator or a network with no node becomes an HTTP status before any byte of the
body is sent. Then it hands out the answer's text as it becomes known, keeps every event it needs
for the DELLM extension field, and tells its observers (metrics, the status page) how it went.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dellm.client.api import DellmClient
from dellm.client.errors import DellmError
from dellm.client.gateway.errors import ApiError, from_client_error, outcome_of
from dellm.client.render import message_dict
from dellm.protos import dellm_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuerySummary:
    """A finished query (answered or not), as the status page and the metrics see it."""

    query: str
    outcome: str  # answered | invalid | busy | unavailable | timeout | failed | cancelled ...
    started_unix: float
    seconds: float  # end to end, as the gateway measured it
    api: str  # which route asked: openai-chat, openai-completions, ollama-chat, ollama-generate
    query_id: str = ""
    answer: str = ""
    error: str = ""
    first_token_s: float | None = None
    final: dellm_pb2.FinalEvent | None = None
    plan: dellm_pb2.PlanEvent | None = None
    redispatches: tuple[tuple[str, str], ...] = ()  # (kind, reason); kind is retry or hedge
    extension: dict[str, Any] = field(default_factory=dict)


class QueryObserver(Protocol):
    """Told about every query the gateway runs: metrics and the status board implement it."""

    def query_started(self) -> None: ...

    def query_finished(self, summary: QuerySummary) -> None: ...


def redispatch_kind(assignment: dellm_pb2.AssignmentEvent) -> str:
    """A retry assignment raced against a slow node is a hedge; any other moved a failed node's work."""
    return "hedge" if assignment.reason.startswith("hedge") else "retry"


class AskSession:
    """``await session.open()``, then ``async for text in session.answer_deltas()``; ``final`` is set
    once the query is answered, and :meth:`extension` gives the DELLM extras."""

    def __init__(self, client: DellmClient, query: str, api: str, observers: Sequence[QueryObserver] = (),
                 names: Callable[[], Mapping[str, str]] = dict) -> None:
        self.query = query
        self.api = api
        self._client = client
        self._observers = tuple(observers)
        self._names = names
        self._events: AsyncIterator[dellm_pb2.AskEvent] | None = None
        self._first: dellm_pb2.AskEvent | None = None
        self._started = time.perf_counter()
        self._started_unix = time.time()
        self._first_token_s: float | None = None
        self._closed = False
        self.plan: dellm_pb2.PlanEvent | None = None
        self.results: dict[str, dellm_pb2.ChunkResultEvent] = {}
        self.redispatches: list[tuple[str, str]] = []
        self.final: dellm_pb2.FinalEvent | None = None
        self.completion_tokens = 0

    @property
    def query_id(self) -> str:
        if self.final is not None:
            return self.final.query_id
        return self.plan.query_id if self.plan is not None else ""

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the query as the coordinator counted them when it planned it."""
        return sum(c.token_count for c in self.plan.chunks) if self.plan is not None else 0

    async def open(self) -> None:
        """Start the query and read its first event; raises ApiError (recorded) when it cannot start."""
        for observer in self._observers:
            observer.query_started()
        self._events = self._client.ask(self.query)
        try:
            self._first = await anext(self._events)
        except StopAsyncIteration:
            self._close("failed", "the coordinator ended the query without an answer")
            raise ApiError(502, "the coordinator ended the query without an answer", "upstream_error") from None
        except DellmError as exc:
            error = from_client_error(exc)
            self._close(outcome_of(error), error.message)
            raise error from exc
        except BaseException:
            self._close("cancelled", "the request was cancelled")
            raise
        self._take(self._first)

    async def answer_deltas(self) -> AsyncIterator[str]:
        """The answer's text as it becomes known. Raises ApiError when the query fails midway."""
        if self._events is None:
            raise RuntimeError("AskSession.open() first")
        sent = ""
        try:
            async for event in self._events:
                self._take(event)
                kind = event.WhichOneof("event")
                if kind == "answer_token" and event.answer_token.text:
                    sent += event.answer_token.text
                    yield event.answer_token.text
                elif kind == "final":
                    break
            if self.final is None:
                raise ApiError(502, "the coordinator ended the query without an answer", "upstream_error")
            answer = self.final.answer
            # the answer tokens were not the whole final answer: send the rest of it, or all of it
            tail = answer[len(sent):] if answer.startswith(sent) else ("\n" if sent else "") + answer
            self._close("answered")  # before the last yield: the answer is complete whether or not it is read
            if tail:
                yield tail
        except DellmError as exc:
            error = from_client_error(exc)
            self._close(outcome_of(error), error.message)
            raise error from exc
        except ApiError as exc:
            self._close(outcome_of(exc), exc.message)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._close("cancelled", "the HTTP client went away")
            raise
        finally:
            await self._stop_call()

    async def answer(self) -> str:
        """The whole answer (for requests that do not stream)."""
        async for _ in self.answer_deltas():
            pass
        assert self.final is not None
        return self.final.answer

    async def aclose(self) -> None:
        """Run after the HTTP response, however it ended: a stream the client left before it began reading
        still ends its gRPC call and is counted (as cancelled); a finished one is left as it was."""
        await self._stop_call()
        self._close("cancelled", "the HTTP client went away before the answer")

    async def _stop_call(self) -> None:
        events, self._events = self._events, None
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            try:
                await aclose()  # cancels the gRPC call, and with it the node streams, when we left early
            except (DellmError, RuntimeError) as exc:
                log.debug("closing the Ask call: %s", exc)

    def _take(self, event: dellm_pb2.AskEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "plan":
            self.plan = event.plan
        elif kind == "chunk_token":
            self.completion_tokens += event.chunk_token.tokens or 1
            if self._first_token_s is None:
                self._first_token_s = time.perf_counter() - self._started
        elif kind == "assignment" and event.assignment.retry:
            self.redispatches.append((redispatch_kind(event.assignment), event.assignment.reason))
        elif kind == "chunk_result":
            self.results[event.chunk_result.chunk_id] = event.chunk_result
        elif kind == "final":
            self.final = event.final

    def _close(self, outcome: str, error: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        summary = QuerySummary(
            query=self.query, outcome=outcome, started_unix=self._started_unix,
            seconds=time.perf_counter() - self._started, api=self.api, query_id=self.query_id,
            answer=self.final.answer if self.final is not None else "", error=error,
            first_token_s=self._first_token_s, final=self.final, plan=self.plan,
            redispatches=tuple(self.redispatches), extension=self.extension() if self.plan is not None else {})
        for observer in self._observers:
            try:
                observer.query_finished(summary)
            except Exception:  # an observer's bug must not fail the user's request
                log.exception("query observer %r failed", observer)

    def extension(self) -> dict[str, Any]:
        """The DELLM extras: the plan, each chunk's winner and votes, the verdicts, the timings, the query id.
        Standard clients ignore this field; DELLM-aware ones read it."""
        names = self._names()
        plan = self.plan
        chunks = []
        for chunk_id, result in self.results.items():
            data = message_dict(result)
            data["winner_name"] = names.get(result.winner_node_id, "")
            chunks.append({"chunk_id": chunk_id, **data})
        ext: dict[str, Any] = {
            "query_id": self.query_id,
            "planner": plan.planner if plan is not None else "",
            "plan": [message_dict(c) for c in plan.chunks] if plan is not None else [],
            "chunks": chunks,
            "redispatches": [{"kind": kind, "reason": reason} for kind, reason in self.redispatches],
        }
        final = self.final
        if final is not None:
            ext.update({
                "synthesis": final.synthesis,
                "checked_by": final.checked_by,
                # Only the asker may judge the query: POST /v1/feedback presents this token (issue 14).
                "feedback_token": final.feedback_token,
                "verdicts": [{**message_dict(r), "node_name": names.get(r.node_id, "")} for r in final.rewards],
                "timings_ms": {t.stage: round(t.ms, 3) for t in final.timings},
                "total_ms": round(final.total_ms, 3),
            })
        return ext
