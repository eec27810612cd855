"""The live status page's data: the nodes, fitness over time, the last queries, and their SSE feed.

:class:`StatusBoard` polls ListNodes every ``node_poll_s`` (the metrics read the same snapshot), keeps
a series of fitness samples per node for the plot, and the last ``history_size`` queries the coordinator
finished, from every client (its Watch feed; from an older coordinator, the queries of this gateway); every
change goes to the pages watching ``/status/events`` as a server-sent event:

    event: state   everything (sent first on each connection)
    event: nodes   the node list after each poll
    event: query   one finished query
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse
from sse_starlette import EventSourceResponse

from dellm.client.api import DellmClient
from dellm.client.errors import DellmError, UnsupportedError
from dellm.client.gateway.config import GatewayConfig
from dellm.client.gateway.session import QuerySummary
from dellm.protos import dellm_pb2

log = logging.getLogger(__name__)
SUBSCRIBER_BACKLOG = 256  # events a slow page may fall behind by before it misses some
FITNESS_HEARTBEAT_S = 60.0  # a fitness sample at least this often even when nothing changed


def node_row(node: dellm_pb2.NodeStatus) -> dict[str, Any]:
    """One node as the page shows it."""
    return {
        "node_id": node.info.node_id, "name": node.info.name, "model": node.info.model, "backend": node.info.backend,
        "address": node.info.address, "state": node.state, "fitness": round(node.fitness, 4),
        "latency_ms": round(node.latency_ms, 1), "in_flight": node.in_flight, "answers": node.answers,
        "correct": node.correct, "failures": node.failures, "last_seen_unix": node.last_seen_unix,
        "canaries_passed": node.canaries_passed, "canaries_failed": node.canaries_failed,
        "operations": {dellm_pb2.Operation.Name(op.operation): {"fitness": round(op.fitness, 4), "trials": op.trials,
                                                                "quarantined": op.quarantined}
                       for op in node.operations},
    }


def summary_of(summary: QuerySummary) -> dellm_pb2.QuerySummary:
    """A query this gateway ran, in the coordinator's Watch form (used when the coordinator has no Watch)."""
    proto = dellm_pb2.QuerySummary(
        query=summary.query, client="this gateway", outcome=summary.outcome, error=summary.error,
        started_unix=summary.started_unix, total_ms=summary.seconds * 1000,
        first_token_ms=(summary.first_token_s or 0.0) * 1000,
        retries=sum(kind == "retry" for kind, _ in summary.redispatches),
        hedges=sum(kind == "hedge" for kind, _ in summary.redispatches))
    if summary.plan is not None:
        proto.plan.CopyFrom(summary.plan)
    if summary.final is not None:
        proto.final.CopyFrom(summary.final)
    return proto


def query_key(summary: dellm_pb2.QuerySummary) -> str:
    return summary.final.query_id or summary.plan.query_id or f"{summary.started_unix}:{summary.client}:{summary.query}"


def query_row(summary: dellm_pb2.QuerySummary, names: dict[str, str]) -> dict[str, Any]:
    """One finished query as the page shows it: its plan, winners, verdicts and time."""
    def name(node_id: str) -> str:
        return names.get(node_id, node_id[:8])

    final = summary.final
    return {
        "key": query_key(summary), "query_id": final.query_id or summary.plan.query_id, "query": summary.query,
        "client": summary.client, "outcome": summary.outcome, "started_unix": summary.started_unix,
        "seconds": round(summary.total_ms / 1000, 3), "answer": final.answer, "error": summary.error,
        "first_token_s": round(summary.first_token_ms / 1000, 3) if summary.first_token_ms else None,
        "retries": summary.retries, "hedges": summary.hedges, "synthesis": final.synthesis,
        "plan": [{"chunk_id": c.chunk_id, "operation": dellm_pb2.Operation.Name(c.operation), "text": c.text}
                 for c in summary.plan.chunks],
        "winners": [{"chunk_id": c.chunk_id, "node_id": c.winner_node_id, "name": name(c.winner_node_id),
                     "agreement": round(c.agreement, 3), "unanimous": c.unanimous, "checked_by": c.checked_by}
                    for c in final.chunks],
        "verdicts": [{"chunk_id": r.chunk_id, "name": name(r.node_id), "verdict": dellm_pb2.Verdict.Name(r.verdict),
                      "source": r.source, "reward": round(r.reward, 4)} for r in final.rewards],
    }


class StatusBoard:
    """Node snapshots, fitness series and recent queries, pushed to subscribers; a QueryObserver."""

    def __init__(self, client: DellmClient, config: GatewayConfig) -> None:
        self._client = client
        self._config = config
        self.nodes: list[dellm_pb2.NodeStatus] = []
        self.coordinator_error = "not asked yet"
        self._listed = False  # whether a ListNodes call ever succeeded
        self._polled_at = 0.0  # when it last did (unix time)
        self._queries: deque[dict[str, Any]] = deque(maxlen=config.history_size)
        self._fitness: dict[str, deque[tuple[float, float, dict[str, float]]]] = {}
        self._subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.watching = False  # whether the coordinator's Watch feed is being followed now
        self.query_listeners: list[Callable[[dellm_pb2.QuerySummary], None]] = []  # told of each new query
        self._refreshing = asyncio.Lock()

    # --- the coordinator's node list --------------------------------------------------------------------------

    def names(self) -> dict[str, str]:
        return {n.info.node_id: n.info.name or n.info.model for n in self.nodes}

    def coordinator_up(self) -> bool:
        return not self.coordinator_error

    async def refresh(self) -> None:
        """Ask the coordinator for its nodes now; on failure keep the last list and say why."""
        async with self._refreshing:
            try:
                nodes = await self._client.nodes()
            except DellmError as exc:
                if str(exc) != self.coordinator_error:
                    log.warning("cannot list the coordinator's nodes: %s", exc)
                self.coordinator_error = str(exc)
                self._publish("nodes", self._nodes_payload())
                return
            if self.coordinator_error and self._listed:
                log.info("coordinator %s answers again", self._client.address)
            self.coordinator_error = ""
            self._listed = True
            self._polled_at = time.time()
            self.nodes = nodes
            self._sample_fitness(nodes, time.time())
            self._publish("nodes", self._nodes_payload())

    def _sample_fitness(self, nodes: list[dellm_pb2.NodeStatus], now: float) -> None:
        for node in nodes:
            series = self._fitness.setdefault(node.info.node_id, deque(maxlen=self._config.fitness_points))
            ops = {dellm_pb2.Operation.Name(op.operation): round(op.fitness, 4) for op in node.operations}
            point = (now, round(node.fitness, 4), ops)
            if not series or series[-1][1:] != point[1:] or now - series[-1][0] >= FITNESS_HEARTBEAT_S:
                series.append(point)

    def _nodes_payload(self) -> dict[str, Any]:
        return {"coordinator": self._client.address, "coordinator_error": self.coordinator_error,
                "polled_at": self._polled_at,
                "nodes": [node_row(n) for n in self.nodes], "fitness": self._fitness_payload()}

    def _fitness_payload(self) -> dict[str, Any]:
        names = self.names()
        return {node_id: {"name": names.get(node_id, node_id[:8]),
                          "points": [[round(t, 3), overall, ops] for t, overall, ops in series]}
                for node_id, series in self._fitness.items()}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._poll(), name="gateway-node-poll"),
                       asyncio.create_task(self._watch(), name="gateway-query-feed")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _poll(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._config.node_poll_s)

    # --- queries ----------------------------------------------------------------------------------------------

    def query_started(self) -> None:
        pass

    def query_finished(self, summary: QuerySummary) -> None:
        """A query through this gateway: shown from here only while the coordinator's Watch feed is not
        (an older coordinator, or the feed reconnecting); otherwise the feed brings it, with every other."""
        if not self.watching:
            self._add(summary_of(summary))

    def _add(self, summary: dellm_pb2.QuerySummary) -> None:
        key = query_key(summary)
        if any(row["key"] == key for row in self._queries):
            return  # replayed after a reconnect, or shown from here before the feed brought it
        row = query_row(summary, self.names())
        self._queries.appendleft(row)
        self._publish("query", row)
        for listener in self.query_listeners:
            listener(summary)

    async def _watch(self) -> None:
        """Follow the coordinator's Watch feed, reconnecting with backoff; give up on an older coordinator."""
        delay = 0.5
        while True:
            try:
                self.watching = True
                async for summary in self._client.watch(replay=True):
                    delay = 0.5
                    self._add(summary)
            except UnsupportedError:
                self.watching = False
                log.info("coordinator %s has no Watch feed (an older version): the status page shows the queries "
                         "of this gateway only", self._client.address)
                return
            except DellmError as exc:
                log.debug("the coordinator's Watch feed broke: %s; reconnecting", exc)
            self.watching = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    # --- what pages read --------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {**self._nodes_payload(), "queries": list(self._queries), "history_size": self._config.history_size,
                "poll_s": self._config.node_poll_s}

    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):  # a page that fell behind misses an update, never blocks us
                queue.put_nowait((kind, data))

    def close_streams(self) -> None:
        """End every page's event stream (the gateway is stopping); pages reconnect to whatever serves next."""
        for queue in list(self._subscribers):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(("close", {}))

    async def events(self) -> AsyncIterator[dict[str, str]]:
        """The SSE stream of one page: the whole state, then every change."""
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        try:
            yield {"event": "state", "data": json.dumps(self.state())}
            while True:
                kind, data = await queue.get()
                if kind == "close":
                    return
                yield {"event": kind, "data": json.dumps(data)}
        finally:
            self._subscribers.discard(queue)


def status_page() -> str:
    return resources.files("dellm.client.gateway").joinpath("status_page.html").read_text(encoding="utf-8")


def board_of(request: Request) -> StatusBoard:
    board: StatusBoard = request.app.state.gateway.board
    return board


def status_router() -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(status_page(), headers={"Cache-Control": "no-store"})

    @router.get("/status/state")
    async def state(request: Request) -> JSONResponse:
        return JSONResponse(board_of(request).state())

    @router.get("/status/events")
    async def events(request: Request) -> EventSourceResponse:
        gateway = request.app.state.gateway
        return EventSourceResponse(gateway.board.events(), ping=gateway.config.sse_ping_s)

    return router
