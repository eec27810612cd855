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

from dellm.coordinator.errors import RegistryUnavailableError, UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry.base import NodeTable, QueryRecord, archived_figures, from_archived, moving_latency
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
CREATE TABLE IF NOT EXISTS archived_nodes (
    node_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    archived_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS node_credentials (
    node_id TEXT PRIMARY KEY,
    digest TEXT NOT NULL
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
# The columns each table of _SCHEMA must have, in a file that has the table: the file's schema is checked
# before anything is written to it.
_TABLE_COLUMNS = {
    "nodes": frozenset(_COLUMNS.split(", ")),
    "op_stats": frozenset({"node_id", "operation", "fitness", "trials", "successes"}),
    "queries": frozenset({"query_id", "query", "answer", "created", "detail"}),
    "node_credentials": frozenset({"node_id", "digest"}),
    "archived_nodes": frozenset({"node_id", "record", "archived_at"}),
}
_START_AFRESH = "or move it away to start a fresh registry (nodes rejoin; their fitness starts over)"


class RegistryFileError(RegistryUnavailableError):
    """The SQLite file cannot serve as the registry: a folder, not a database, damaged, another program's
    database, or emptied. ``str()`` is one line naming the file and what to do."""


def _open_checked(path: Path | str, timeout: float) -> sqlite3.Connection:
    """A connection to the registry file ``path``, checked before anything is written to it.

    Refused with RegistryFileError: a folder; an existing empty (0-byte) file (a registry this class
    made holds its schema from the moment it is opened, so an empty one was emptied by a failure, or
    made by something else: starting afresh in it would discard the nodes' fitness without a word);
    a file that is not an SQLite database; a damaged one (``PRAGMA quick_check``, which also finds a
    truncated file); one with other tables and none of ours, or ours without their columns.
    """
    name = str(path)
    file = None if name in (":memory:", "") else Path(name)
    existed = file is not None and file.exists()
    if file is not None and file.is_dir():
        raise RegistryFileError(f"registry {name} is a folder, not a file; give a file path such as "
                                f"{file / 'coordinator.sqlite3'}")
    if file is not None and existed and file.stat().st_size == 0:
        raise RegistryFileError(f"registry {name} is empty (0 bytes), which a registry never is: it was emptied "
                                "(restore it from a backup) or made by something else; delete it to start a "
                                "fresh registry")
    try:
        db = sqlite3.connect(name, check_same_thread=False, isolation_level=None, timeout=timeout)
    except sqlite3.Error as exc:
        raise RegistryFileError(f"registry {name} cannot be opened: {exc}") from exc
    try:
        if existed:
            _check_contents(db, name)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        # A coordinator that starts has not heard from anyone yet: nodes come back as they rejoin.
        db.execute("UPDATE nodes SET state = 'down'")
    except sqlite3.DatabaseError as exc:
        db.close()
        text = str(exc)
        if "not a database" in text:
            raise RegistryFileError(f"registry {name} is not an SQLite database: did --registry name the wrong "
                                    f"file? Give another path, {_START_AFRESH}") from exc
        if "malformed" in text or "corrupt" in text:
            raise RegistryFileError(f"registry {name} is damaged ({text}): restore it from a backup, "
                                    f"{_START_AFRESH}") from exc
        raise RegistryFileError(f"registry {name} cannot be opened: {text} (can this user read and write it and "
                                "its folder?)") from exc
    except BaseException:
        db.close()
        raise
    return db


def _check_contents(db: sqlite3.Connection, name: str) -> None:
    """Raise RegistryFileError unless the existing database ``name`` is whole and is (or could be) ours."""
    verdict = [row[0] for row in db.execute("PRAGMA quick_check(1)").fetchall()]
    if verdict != ["ok"]:
        raise RegistryFileError(f"registry {name} is damaged ({'; '.join(map(str, verdict))}): restore it from a "
                                f"backup, {_START_AFRESH}")
    tables = {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    if tables and not tables & _TABLE_COLUMNS.keys():
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise RegistryFileError(f"registry {name} is another program's database (tables {shown}), not a DELLM "
                                "registry: give another path")
    for table in sorted(tables & _TABLE_COLUMNS.keys()):
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = sorted(_TABLE_COLUMNS[table] - columns)
        if missing:
            raise RegistryFileError(f"registry {name} has a {table} table without the columns {', '.join(missing)}: "
                                    f"it is not a DELLM registry, or an incompatible one; give another path, "
                                    f"{_START_AFRESH}")


class SqliteRegistry:
    """Registry in one SQLite file; ``:memory:`` for a throwaway one.

    Every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent
    rewards (from this or another process on the same file) are never lost.
    """

    def __init__(self, path: Path | str, *, initial_fitness: float = 0.5, busy_timeout_s: float = 10.0) -> None:
        self._initial_fitness = initial_fitness
        self._lock = threading.RLock()
        self._batch_depth = 0  # inside batch(): the calls join its transaction
        self.path = str(path)
        # how long a write waits for another connection's lock before it fails
        self._db = _open_checked(path, timeout=busy_timeout_s)  # RegistryFileError when the file cannot be the registry

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
            self._restore(db, info, now)
            db.execute(
                "INSERT INTO nodes (node_id, info, fitness, state, last_seen) VALUES (?, ?, ?, 'up', ?) "
                "ON CONFLICT(node_id) DO UPDATE SET info = excluded.info, state = 'up', "
                "last_seen = excluded.last_seen, failure_streak = 0",
                (info.node_id, json.dumps(asdict(info)), self._initial_fitness, now),
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (info.node_id,)).fetchone()
        return self._record(row)

    @staticmethod
    def _restore(db: sqlite3.Connection, info: NodeDescription, now: float) -> None:
        """A pruned node that comes back gets its archived figures back (inside the caller's transaction)."""
        if db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (info.node_id,)).fetchone() is not None:
            return
        row = db.execute("SELECT record FROM archived_nodes WHERE node_id = ?", (info.node_id,)).fetchone()
        if row is None:
            return
        kept = json.loads(row[0])
        db.execute(f"INSERT INTO nodes ({_COLUMNS}) VALUES (?, ?, ?, ?, 'up', ?, ?, ?, ?, 0)",
                   (info.node_id, json.dumps(asdict(info)), kept["fitness"], kept["latency_ms"], now,
                    kept["answers"], kept["correct"], kept["failures"]))
        db.executemany("INSERT INTO op_stats (node_id, operation, fitness, trials, successes) VALUES (?, ?, ?, ?, ?)",
                       [(info.node_id, op, *figures) for op, figures in kept["op_stats"].items()])
        db.execute("DELETE FROM archived_nodes WHERE node_id = ?", (info.node_id,))

    def prune(self, node_id: str) -> None:
        with self._transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if row is None:
                raise UnknownNodeError(node_id)
            record = self._record(row, self._op_stats(node_id).get(node_id))
            db.execute("INSERT OR REPLACE INTO archived_nodes (node_id, record, archived_at) VALUES (?, ?, ?)",
                       (node_id, json.dumps(archived_figures(record)), time.time()))
            db.execute("DELETE FROM op_stats WHERE node_id = ?", (node_id,))
            db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))

    def archived(self) -> dict[str, NodeRecord]:
        """The pruned nodes' figures by id (read once by the write-behind cache)."""
        with self._lock:
            rows = self._db.execute("SELECT node_id, record FROM archived_nodes").fetchall()
        return {node_id: from_archived(node_id, json.loads(text)) for node_id, text in rows}

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

    def node_credential(self, node_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT digest FROM node_credentials WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else str(row[0])

    def node_credentials(self) -> dict[str, str]:
        """Every bound node id and its secret digest (read once by the write-behind cache)."""
        with self._lock:
            return {str(k): str(v) for k, v in self._db.execute("SELECT node_id, digest FROM node_credentials")}

    def bind_credential(self, node_id: str, digest: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO node_credentials (node_id, digest) VALUES (?, ?)", (node_id, digest))

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
