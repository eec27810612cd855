"""The embedded default registry: one SQLite file (WAL mode) that survives restarts."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from dellm.coordinator.errors import UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry.base import NodeTable, QueryRecord, moving_latency
from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos.wire import NodeDescription

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    fitness REAL NOT NULL,
    latency_ms REAL,
    state TEXT NOT NULL,
    last_seen REAL NOT NULL,
    answers INTEGER NOT NULL DEFAULT 0,
    correct INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    failure_streak INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS op_stats (
    node_id TEXT NOT NULL,
    operation TEXT NOT NULL,
    fitness REAL NOT NULL,
    trials INTEGER NOT NULL DEFAULT 0,
    successes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node_id, operation)
);
CREATE TABLE IF NOT EXISTS queries (
    query_id TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL,
    detail TEXT NOT NULL
);
"""
_COLUMNS = "node_id, info, fitness, latency_ms, state, last_seen, answers, correct, failures, failure_streak"


class SqliteRegistry:
    """Registry in one SQLite file; ``:memory:`` for a throwaway one.

    Every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent
    rewards (from this or another process on the same file) are never lost.
    """

    def __init__(self, path: Path | str, *, initial_fitness: float = 0.5) -> None:
        self._initial_fitness = initial_fitness
        self._lock = threading.RLock()
        self._batch_depth = 0  # inside batch(): the calls join its transaction
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # A coordinator that starts has not heard from anyone yet: nodes come back as they rejoin.
        self._db.execute("UPDATE nodes SET state = 'down'")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the connection lock in one BEGIN IMMEDIATE ... COMMIT (or join the batch already open)."""
        with self._lock:
            if self._batch_depth:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run many calls in one transaction: one commit for a whole batch of updates."""
        with self._transaction():
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1

    @staticmethod
    def _record(row: tuple, op_stats: dict[str, OpStats] | None = None) -> NodeRecord:  # type: ignore[type-arg]
        _, info, fitness, latency, state, last_seen, answers, correct, failures, streak = row
        return NodeRecord(NodeDescription(**json.loads(info)), fitness, latency, state, last_seen,
                          answers, correct, failures, streak, op_stats or {})

    def _op_stats(self, node_id: str | None = None) -> dict[str, dict[str, OpStats]]:
        query = "SELECT node_id, operation, fitness, trials, successes FROM op_stats"
        rows = (self._db.execute(query + " WHERE node_id = ?", (node_id,)) if node_id is not None
                else self._db.execute(query)).fetchall()
        stats: dict[str, dict[str, OpStats]] = {}
        for nid, operation, fitness, trials, successes in rows:
            stats.setdefault(nid, {})[operation] = OpStats(fitness, trials, successes)
        return stats

    def upsert_node(self, info: NodeDescription, *, now: float) -> NodeRecord:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO nodes (node_id, info, fitness, state, last_seen) VALUES (?, ?, ?, 'up', ?) "
                "ON CONFLICT(node_id) DO UPDATE SET info = excluded.info, state = 'up', "
                "last_seen = excluded.last_seen, failure_streak = 0",
                (info.node_id, json.dumps(asdict(info)), self._initial_fitness, now),
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (info.node_id,)).fetchone()
        return self._record(row)

    def set_state(self, node_id: str, state: str, *, now: float | None = None) -> None:
        with self._transaction() as db:
            if now is None:
                cursor = db.execute("UPDATE nodes SET state = ? WHERE node_id = ?", (state, node_id))
            else:
                cursor = db.execute("UPDATE nodes SET state = ?, last_seen = ? WHERE node_id = ?",
                                    (state, now, node_id))
            if cursor.rowcount == 0:
                raise UnknownNodeError(node_id)

    def get(self, node_id: str) -> NodeRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            stats = self._op_stats(node_id)
        if row is None:
            raise UnknownNodeError(node_id)
        return self._record(row, stats.get(node_id))

    def list_nodes(self) -> list[NodeRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY node_id").fetchall()
            stats = self._op_stats()
        return [self._record(r, stats.get(r[0])) for r in rows]

    def table(self) -> NodeTable:
        """A fresh read of the live nodes: the file may be shared (a coordinator keeps a ``CachedRegistry``)."""
        return NodeTable(self.list_nodes())

    def record_answer(
        self, node_id: str, latency_ms: float | None, *, failed: bool, alpha: float, now: float | None = None,
    ) -> NodeRecord:
        with self._transaction() as db:
            row = db.execute("SELECT latency_ms FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownNodeError(node_id)
            latency = moving_latency(row[0], latency_ms, alpha, failed)
            db.execute(
                "UPDATE nodes SET latency_ms = ?, answers = answers + 1, last_seen = ?, "
                "failures = failures + ?, failure_streak = CASE WHEN ? THEN failure_streak + 1 ELSE 0 END "
                "WHERE node_id = ?",
                (latency, time.time() if now is None else now, int(failed), failed, node_id),
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return self._record(row)

    def apply_reward(
        self, node_id: str, reward: float, correct: bool | None, update: Callable[[float], float],
        operation: str = "",
    ) -> tuple[float, float]:
        with self._transaction() as db:
            row = db.execute("SELECT fitness FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownNodeError(node_id)
            before = float(row[0])
            after = update(before)
            db.execute("UPDATE nodes SET fitness = ?, correct = correct + ? WHERE node_id = ?",
                       (after, int(bool(correct)), node_id))
            if operation:
                op = db.execute("SELECT fitness FROM op_stats WHERE node_id = ? AND operation = ?",
                                (node_id, operation)).fetchone()
                db.execute(
                    "INSERT INTO op_stats (node_id, operation, fitness, trials, successes) VALUES (?, ?, ?, 1, ?) "
                    "ON CONFLICT(node_id, operation) DO UPDATE SET fitness = excluded.fitness, "
                    "trials = trials + 1, successes = successes + excluded.successes",
                    (node_id, operation, update(before if op is None else float(op[0])), int(bool(correct))),
                )
        return before, after

    def save_query(self, record: QueryRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO queries (query_id, query, answer, created, detail) VALUES (?, ?, ?, ?, ?)",
                (record.query_id, record.query, record.answer, record.created, json.dumps(record.detail)),
            )

    def get_query(self, query_id: str) -> QueryRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT query_id, query, answer, created, detail FROM queries WHERE query_id = ?", (query_id,)
            ).fetchone()
        if row is None:
            raise UnknownQueryError(query_id)
        return QueryRecord(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def close(self) -> None:
        with self._lock:
            self._db.close()
