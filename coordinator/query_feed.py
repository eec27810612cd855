"""The queries the coordinator finished, from every client, for the Watch RPC (the status page's feed).

The servicer's Ask gives each query a :class:`QueryTracker`, which reads the AskEvents as they go out and,
when the query ends (answered, refused, failed or cancelled), publishes one ``QuerySummary``. The feed
keeps the last ``history`` of them for a watcher that asks for a replay, and hands every new one to each
watcher's queue; a watcher that falls behind loses updates, never slows a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from dellm.protos import dellm_pb2

WATCHER_BACKLOG = 256  # summaries a slow watcher may fall behind by before it misses some

OUTCOMES = {  # gRPC status of a failed query -> its outcome
    "INVALID_ARGUMENT": "invalid",
    "RESOURCE_EXHAUSTED": "busy",
    "UNAVAILABLE": "unavailable",
}


class QueryTracker:
    """One query's summary in the making; :meth:`finish` publishes it (once)."""

    def __init__(self, feed: QueryFeed, query: str, client: str) -> None:
        self._feed = feed
        self._started = time.perf_counter()
        self._finished = False
        self.summary = dellm_pb2.QuerySummary(query=query, client=client, started_unix=time.time())

    def see(self, event: dellm_pb2.AskEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "plan":
            self.summary.plan.CopyFrom(event.plan)
        elif kind == "chunk_token" and not self.summary.first_token_ms:
            self.summary.first_token_ms = (time.perf_counter() - self._started) * 1000
        elif kind == "assignment" and event.assignment.retry:
            if event.assignment.reason.startswith("hedge"):
                self.summary.hedges += 1
            else:
                self.summary.retries += 1
        elif kind == "final":
            self.summary.final.CopyFrom(event.final)

    def finish(self, outcome: str, error: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        self.summary.outcome = outcome
        self.summary.error = error
        self.summary.total_ms = (time.perf_counter() - self._started) * 1000
        self._feed.publish(self.summary)

    def failed(self, status_name: str, error: str) -> None:
        self.finish(OUTCOMES.get(status_name, "failed"), error)


class QueryFeed:
    """Recent query summaries and the watchers waiting for new ones."""

    def __init__(self, history: int = 50) -> None:
        self._recent: deque[dellm_pb2.QuerySummary] = deque(maxlen=history)
        self._watchers: set[asyncio.Queue[dellm_pb2.QuerySummary]] = set()

    def track(self, query: str, client: str) -> QueryTracker:
        return QueryTracker(self, query, client)

    def publish(self, summary: dellm_pb2.QuerySummary) -> None:
        self._recent.append(summary)
        for queue in list(self._watchers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(summary)

    async def watch(self, replay: bool) -> AsyncIterator[dellm_pb2.QuerySummary]:
        """The recent summaries (with ``replay``, oldest first), then each new one as it is published."""
        queue: asyncio.Queue[dellm_pb2.QuerySummary] = asyncio.Queue(WATCHER_BACKLOG)
        self._watchers.add(queue)
        try:
            if replay:
                for summary in list(self._recent):
                    yield summary
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)
