"""The coordinator's in-memory node table, and the write-behind cache in front of a registry it owns.

Routing reads the nodes for every chunk. Reading them from SQLite costs a query and a JSON decode per
node (86 ms at 10,000 nodes); ``CachedRegistry`` keeps every record in memory instead, applies each
update there at once, and writes the updates to the file in batches from a background thread (one
transaction per batch instead of one per answer and per reward). The file is owned by this
coordinator: several coordinators share state through Redis, which is read directly.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from dellm.coordinator.errors import RegistryUnavailableError, UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry.base import NodeRegistry, NodeTable, QueryRecord, moving_latency
from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos.wire import NodeDescription, NodeState

log = logging.getLogger(__name__)


class RegistryWriteError(RegistryUnavailableError):
    """Updates the write-behind cache could not write to its store before closing (the coordinator exits non-zero)."""


class CachedRegistry:
    """A ``NodeRegistry`` whose reads come from memory and whose writes reach ``backing`` in the background.

    Every write is applied to the in-memory record first (so the next read sees it) and queued as the
    same call on ``backing``; a flusher thread replays the queue inside one ``backing.batch()``
    transaction when the backing offers it. It runs every ``flush_interval_s``, and at once (but at most
    every ``min_gap_s``) when a query is saved: a finished query's record, and the answers and rewards
    queued before it, are in the file within a few tens of milliseconds, so even a SIGKILL loses at
    most that. Not thread-safe: one event loop owns it.

    When the store fails (file locked, disk full), the batch is not dropped: it goes back to the front
    of the queue and is retried with backoff (``retry_min_s`` doubling to ``retry_max_s``), while every
    read keeps coming from memory. The queue is bounded (``max_pending`` updates; past it the oldest are
    dropped, and counted in ``dropped``); ``failed_flushes`` counts failed attempts, each streak logged as
    an error when it starts and every ``retry_max_s`` while it lasts. ``close`` keeps trying for up to
    ``close_retry_s``, then raises RegistryWriteError saying how much was not written.
    """

    def __init__(self, backing: NodeRegistry, *, initial_fitness: float = 0.5, flush_interval_s: float = 0.2,
                 min_gap_s: float = 0.02, max_pending: int = 200_000, retry_min_s: float = 0.2,
                 retry_max_s: float = 5.0, close_retry_s: float = 10.0, name: str = "the registry store") -> None:
        self._backing = backing
        self._initial_fitness = initial_fitness
        self._records = {record.node_id: record for record in backing.list_nodes()}
        self._table = NodeTable(self._records.values())
        self._queries: dict[str, QueryRecord] = {}  # saved, not yet flushed
        credentials = getattr(backing, "node_credentials", None)  # read once: the cache owns the store
        self._credentials: dict[str, str | None] = dict(credentials()) if credentials is not None else {}
        self._read_through = credentials is None
        archived = getattr(backing, "archived", None)
        self._archive: dict[str, NodeRecord] = dict(archived()) if archived is not None else {}
        self.name = name
        self.failed_flushes = 0  # attempts that met a failing store
        self.dropped = 0  # updates given up on: the queue was past max_pending
        self._failing_since: float | None = None  # time.monotonic() the current streak of failures began
        self._last_alarm = 0.0
        self._max_pending = max_pending
        self._retry_min_s, self._retry_max_s, self._close_retry_s = retry_min_s, retry_max_s, close_retry_s
        self._pending: list[Callable[[], object]] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._interval = flush_interval_s
        self._min_gap_s = min_gap_s
        self._flusher = threading.Thread(target=self._flush_loop, name="registry-flush", daemon=True)
        self._flusher.start()

    # --- reads: memory only ---------------------------------------------------------

    def table(self) -> NodeTable:
        return self._table

    def get(self, node_id: str) -> NodeRecord:
        try:
            return self._records[node_id]
        except KeyError:
            raise UnknownNodeError(node_id) from None

    def list_nodes(self) -> list[NodeRecord]:
        return [self._records[node_id] for node_id in sorted(self._records)]

    def get_query(self, query_id: str) -> QueryRecord:
        with self._pending_lock:
            record = self._queries.get(query_id)
        if record is not None:
            return record
        try:
            return self._backing.get_query(query_id)
        except UnknownQueryError:
            with self._pending_lock:  # it may have been flushed between the two looks
                if query_id in self._queries:
                    return self._queries[query_id]
            raise

    # --- writes: memory now, the backing store later -----------------------------------

    def _store(self, record: NodeRecord) -> NodeRecord:
        self._records[record.node_id] = record
        self._table.put(record)
        return record

    def _queue(self, call: Callable[[], object]) -> None:
        with self._pending_lock:
            self._pending.append(call)

    def upsert_node(self, info: NodeDescription, *, now: float) -> NodeRecord:
        known = self._records.get(info.node_id) or self._archive.pop(info.node_id, None)
        record = (replace(known, info=info, state=NodeState.UP, last_seen=now, failure_streak=0) if known is not None
                  else NodeRecord(info, self._initial_fitness, None, NodeState.UP, now))
        self._queue(lambda: self._backing.upsert_node(info, now=now))
        return self._store(record)

    def prune(self, node_id: str) -> None:
        self._archive[node_id] = self.get(node_id)
        del self._records[node_id]
        self._table.discard(node_id)
        self._queue(lambda: self._backing.prune(node_id))

    def set_state(self, node_id: str, state: str, *, now: float | None = None) -> None:
        known = self.get(node_id)
        self._store(replace(known, state=state, last_seen=known.last_seen if now is None else now))
        self._queue(lambda: self._backing.set_state(node_id, state, now=now))

    def record_answer(
        self, node_id: str, latency_ms: float | None, *, failed: bool, alpha: float, now: float | None = None,
    ) -> NodeRecord:
        known = self.get(node_id)
        now = time.time() if now is None else now
        record = replace(known, latency_ms=moving_latency(known.latency_ms, latency_ms, alpha, failed),
                         answers=known.answers + 1, last_seen=now,
                         failures=known.failures + int(failed),
                         failure_streak=known.failure_streak + 1 if failed else 0)
        self._queue(lambda: self._backing.record_answer(node_id, latency_ms, failed=failed, alpha=alpha,
                                                               now=now))
        return self._store(record)

    def apply_reward(
        self, node_id: str, reward: float, correct: bool | None, update: Callable[[float], float],
        operation: str = "",
    ) -> tuple[float, float]:
        known = self.get(node_id)
        before = known.fitness
        after = update(before)
        op_stats = known.op_stats
        if operation:
            old = op_stats.get(operation)
            op_stats = {**op_stats, operation: OpStats(update(before if old is None else old.fitness),
                                                       (old.trials if old else 0) + 1,
                                                       (old.successes if old else 0) + int(bool(correct)))}
        self._store(replace(known, fitness=after, correct=known.correct + int(bool(correct)), op_stats=op_stats))
        self._queue(lambda: self._backing.apply_reward(node_id, reward, correct, update, operation))
        return before, after

    def node_credential(self, node_id: str) -> str | None:
        if self._read_through and node_id not in self._credentials:
            self._credentials[node_id] = self._backing.node_credential(node_id)
        return self._credentials.get(node_id)

    def bind_credential(self, node_id: str, digest: str) -> None:
        self._credentials[node_id] = digest
        self._queue(lambda: self._backing.bind_credential(node_id, digest))

    def save_query(self, record: QueryRecord) -> None:
        with self._pending_lock:
            self._queries[record.query_id] = record  # readable at once, from memory until flushed
            self._pending.append(lambda: self._backing.save_query(record))
        self._wake.set()  # a finished query is written soon, not at the next interval

    # --- the flusher -------------------------------------------------------------------

    @property
    def unwritten(self) -> int:
        """Updates not in the store yet: queued, held after a failure, or dropped."""
        with self._pending_lock:
            return len(self._pending) + self.dropped

    def flush(self) -> bool:
        """Write everything queued so far to the backing store (called by the flusher and by ``close``);
        False when the store failed, the updates then held for the next attempt."""
        with self._pending_lock:
            calls, self._pending = self._pending, []
            saved = list(self._queries)
        if not calls:
            return True
        batch = getattr(self._backing, "batch", contextlib.nullcontext)  # one transaction where the store has them
        try:
            with batch():
                self._replay(calls)
        except Exception as exc:  # the store itself failed (disk full, locked): keep the batch, say so
            self._held(calls, exc)
            return False  # the queries stay readable from memory
        with self._pending_lock:
            for query_id in saved:
                self._queries.pop(query_id, None)
        if self._failing_since is not None:
            log.warning("registry: %s takes writes again: %d updates written after %d failed attempts over %.1fs",
                        self.name, len(calls), self.failed_flushes, time.monotonic() - self._failing_since)
            self._failing_since = None
        return True

    def _held(self, calls: list[Callable[[], object]], exc: Exception) -> None:
        """Put a failed batch back in front of the queue (bounded), count and report the failure."""
        with self._pending_lock:
            self._pending[:0] = calls
            overflow = len(self._pending) - self._max_pending
            if overflow > 0:
                del self._pending[:overflow]
                self.dropped += overflow
            held = len(self._pending)
        self.failed_flushes += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_alarm >= self._retry_max_s or self.failed_flushes == 1:
            self._last_alarm = now
            log.error("registry: updates could not be written to %s (%s: %s): %d held in memory and retried%s",
                      self.name, type(exc).__name__, exc, held,
                      f"; {self.dropped} dropped past the bound of {self._max_pending}" if self.dropped else "")

    @staticmethod
    def _replay(calls: list[Callable[[], object]]) -> None:
        for call in calls:
            try:
                call()
            except UnknownNodeError as exc:  # cannot happen while this cache is the only writer
                log.warning("registry: update for unknown node %s dropped", exc)

    def _flush_loop(self) -> None:
        backoff = self._retry_min_s
        while not self._closing.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            if self.flush():
                backoff = self._retry_min_s
                self._closing.wait(self._min_gap_s)  # batches of at least this long under load
            else:  # a failing store: wait it out, doubling, however many queries finish meanwhile
                self._closing.wait(backoff)
                backoff = min(self._retry_max_s, backoff * 2)

    def close(self) -> None:
        """Flush what is left, retrying a failing store for up to ``close_retry_s``; RegistryWriteError
        (after closing the store) when updates are still unwritten."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.set()
        self._flusher.join()
        deadline = time.monotonic() + self._close_retry_s
        backoff = self._retry_min_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
            backoff = min(self._retry_max_s, backoff * 2)
        unwritten = self.unwritten
        self._backing.close()
        if unwritten:
            log.error("registry: %d updates were never written to %s", unwritten, self.name)
            raise RegistryWriteError(f"{unwritten} registry updates (answers, rewards, query records) could not be "
                                     f"written to {self.name} before shutdown ({self.failed_flushes} failed "
                                     "attempts); nodes' fitness there is older than it was")
