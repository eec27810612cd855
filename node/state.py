"""What a node keeps on disk: its stable id and the feedback it has received."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def node_state_dir(state_dir: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "default"
    path = state_dir / "nodes" / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_or_create_node_id(folder: Path) -> str:
    """The node's id, created once and kept across restarts (fitness follows it)."""
    path = folder / "node_id"
    if path.exists():
        node_id = path.read_text(encoding="utf-8").strip()
        if re.fullmatch(r"[0-9a-f]{32}", node_id):
            return node_id
    node_id = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    tmp.replace(path)
    return node_id


@dataclass(frozen=True)
class FeedbackEntry:
    query_id: str
    chunk_id: str
    prompt: str
    answer: str
    verdict: str  # CORRECT | WRONG | UNKNOWN
    reward: float
    correct_answer: str
    fitness: float
    source: str
    received_at: float


class FeedbackStore:
    """Feedback the node has received, in SQLite: what it was asked, its answer, the verdict."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS feedback (query_id TEXT, chunk_id TEXT, prompt TEXT, answer TEXT, "
            "verdict TEXT, reward REAL, correct_answer TEXT, fitness REAL, source TEXT, received_at REAL)"
        )

    def add(self, entry: FeedbackEntry) -> int:
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.query_id, entry.chunk_id, entry.prompt, entry.answer, entry.verdict, entry.reward,
                 entry.correct_answer, entry.fitness, entry.source, entry.received_at or time.time()),
            )
            return int(self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def entries(self, limit: int = 1000) -> list[FeedbackEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM feedback ORDER BY received_at DESC LIMIT ?", (limit,)).fetchall()
        return [FeedbackEntry(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
