"""What a node keeps on disk: its stable id and the feedback it has received.

The feedback is also what the node learns from. Only entries whose verdict rests on real
evidence (:data:`EVIDENCE_SOURCES`: an exact check, a label, a user's word) count as
verified; a majority vote does not, since the majority can be wrong. From those the node
takes few-shot examples for its prompts (:meth:`FeedbackStore.verified_examples`) and
``dellm-node train`` takes LoRA training pairs (:meth:`FeedbackStore.training_pairs`).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dellm.protos.wire import VERIFIED_SOURCES

#: Feedback sources that carry real evidence of right or wrong (not "vote", "failure" or "none").
EVIDENCE_SOURCES: tuple[str, ...] = tuple(sorted(VERIFIED_SOURCES))  # defined once, in the wire contract

#: How many of the latest verified entries few-shot lookups rank (keeps each lookup cheap).
MAX_EXAMPLE_CANDIDATES = 2000

#: A verified entry whose prompt, answer and correct answer are longer than this together is never a
#: few-shot example or a training pair: an example is a short question and its answer, and one huge
#: entry (a user's 3.9 MB "right answer") would otherwise fill every prompt it is similar to.
MAX_EXAMPLE_CHARS = 4000

#: Rebuilding the few-shot index after new feedback takes at most this share of the node's time: a
#: build that took 10 ms is not repeated within 0.2 s (until then the last index answers). A busy
#: node gets feedback several times a second, and rebuilding 2,000 candidates each time starved it.
INDEX_BUILD_SHARE = 0.05
CHEAP_INDEX_BUILD_S = 0.002  # builds quicker than this are redone on every change: new feedback counts at once

_WORD = re.compile(r"[^\W_]+")

#: English function words left out of the similarity: TF-IDF still gives a word found in every
#: prompt some weight, and "the" alone must not make two questions look alike.
STOP_WORDS: frozenset[str] = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "do", "does", "for", "from",
    "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on",
    "or", "our", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "to", "was", "we", "were", "what", "when", "where", "which", "who", "whom", "why", "will", "with", "would", "you",
    "your",
})


FEEDBACK_FILE = "feedback.sqlite3"  # in a node's state folder: written by the node, read by `dellm-node train`


#: A node name: it keys the node's state folder and starts its mDNS instance name (which must fit in one
#: 63-byte DNS label with "-" and 8 characters of the node id), so: 1-48 letters, digits, '-', '_' or '.',
#: not starting with '.' (no '.', '..' or hidden folder), never a path separator.
NODE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,47}")
NODE_ID = re.compile(r"[0-9a-f]{32}")  # what load_or_create_node_id writes: uuid4().hex


class NodeStateError(ValueError):
    """A node name that cannot key a state folder, or a node_id file that does not hold a node id.
    ``str()`` is one line naming the problem and the fix."""


def check_node_name(name: str) -> str:
    """``name`` when it is a valid node name (see NODE_NAME); else NodeStateError saying why."""
    if not NODE_NAME.fullmatch(name):
        shown = repr(name if len(name) <= 60 else name[:60] + "...")
        raise NodeStateError(f"node name {shown} ({len(name)} characters) is not valid: use 1-48 letters, digits, "
                             "'-', '_' or '.', not starting with '.'")
    return name


def node_state_dir(state_dir: Path, name: str, *, create: bool = True) -> Path:
    """The folder of node ``name`` under ``state_dir`` (NodeStateError for a name that is not valid:
    never a folder elsewhere)."""
    path = state_dir / "nodes" / check_node_name(name)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


class StateFolderLock:
    """An exclusive lock (flock) on a node's state folder itself, held while this object is open; nothing is
    written into the folder."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def lock_state_folder(folder: Path, name: str) -> StateFolderLock:
    """Hold the folder's lock until the returned object is closed (or the process ends), or raise
    NodeStateError when another dellm-node holds it: two nodes with one state folder would share one node
    id, and the coordinator would refuse the second as a duplicate."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise NodeStateError(f"another dellm-node is already running as {name!r} (its state folder {folder} is in "
                             "use): give this one its own --name") from None
    return StateFolderLock(fd)


def _read_kept(path: Path, pattern: re.Pattern[str], what: str, shape: str, delete: str) -> str | None:
    """The value a node keeps in ``path`` (None when there is no such file yet); a file that cannot be read
    or does not match ``pattern`` is refused with NodeStateError naming it and the fix, never replaced."""
    if not (path.exists() or path.is_symlink()):
        return None
    start_over = f"{delete} to start this node over with a new id (its fitness starts over too)"
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise NodeStateError(f"cannot read the {what} file {path} ({reason}); fix it, or {start_over}") from exc
    if not pattern.fullmatch(value):
        raise NodeStateError(f"the {what} file {path} is corrupt{' ' + shape if shape else ''}; restore it, or "
                             f"{start_over}")
    return value


def load_or_create_node_id(folder: Path) -> str:
    """The node's id, created once and kept across restarts (fitness follows it).

    A node_id file that cannot be read or does not hold an id is refused with NodeStateError, never
    replaced: a new id would silently start the node over as a stranger (fitness and history lost).
    """
    path = folder / "node_id"
    kept = _read_kept(path, NODE_ID, "node id", "(it should hold 32 hex digits)", "delete it")
    if kept is not None:
        return kept
    node_id = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n", encoding="utf-8")
    tmp.replace(path)
    return node_id


NODE_SECRET_FILE = "node_secret"  # in a node's state folder, beside node_id (mode 0600)
NODE_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")  # what new_node_secret makes: 32 random bytes, URL-safe base64


def new_node_secret() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_node_secret(folder: Path) -> str:
    """The node's secret, made once at its first start and kept beside its id (mode 0600).

    Coordinators bind the node id to it at the first Join and require it for later Joins and the
    Leave (coordinator/identity.py), so it is refused when damaged, never replaced: a new secret would
    lock the node out of its own id. NodeStateError names the file and the fix.
    """
    path = folder / NODE_SECRET_FILE
    kept = _read_kept(path, NODE_SECRET, "node secret", "", "delete it and node_id")
    if kept is not None:
        return kept
    secret = new_node_secret()
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    tmp.replace(path)
    return secret


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


@dataclass(frozen=True)
class FewShotExample:
    """A verified (prompt, answer) pair, and how similar its prompt is to the one asked."""

    prompt: str
    answer: str
    similarity: float


class FeedbackStore:
    """Feedback the node has received, in SQLite: what it was asked, its answer, the verdict."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()  # builds the few-shot index once per change, not once per caller
        self._index: _ExampleIndex | None = None
        self._index_built_at = 0.0  # time.monotonic() of the last build
        self._index_cost_s = 0.0  # how long it took
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS feedback (query_id TEXT, chunk_id TEXT, prompt TEXT, answer TEXT, "
            "verdict TEXT, reward REAL, correct_answer TEXT, fitness REAL, source TEXT, received_at REAL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS feedback_by_source ON feedback (source, received_at)")
        self._db.commit()

    def add(self, entry: FeedbackEntry) -> int:
        return self.add_many([entry])

    def add_many(self, entries: Sequence[FeedbackEntry]) -> int:
        """Store entries in one transaction; returns how many the node now holds."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.query_id, e.chunk_id, e.prompt, e.answer, e.verdict, e.reward, e.correct_answer, e.fitness,
                  e.source, e.received_at or time.time()) for e in entries],
            )
            return int(self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def count(self) -> int:
        """How many feedback entries the node holds (verified or not)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def entries(self, limit: int = 1000) -> list[FeedbackEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM feedback ORDER BY received_at DESC LIMIT ?", (limit,)).fetchall()
        return [FeedbackEntry(*row) for row in rows]

    def training_pairs(self, limit: int | None = None) -> list[tuple[str, str]]:
        """Verified (prompt, answer) pairs, newest first, one per prompt (the latest usable entry wins).

        A CORRECT entry gives the node's own answer; a WRONG one gives ``"Answer: "`` plus the
        correct answer, when the feedback carried one and the node's own answer was short (see
        SHORT_ANSWER_CHARS). ``limit`` caps the number of pairs.
        """
        pairs = _verified_pairs(self._verified_rows(None))
        return pairs if limit is None else pairs[: max(0, limit)]

    def verified_examples(self, prompt: str, k: int) -> list[FewShotExample]:
        """The ``k`` verified pairs whose prompts are most like ``prompt`` (TF-IDF cosine > 0).

        Candidates are the latest :data:`MAX_EXAMPLE_CANDIDATES` verified entries, one per
        prompt. A candidate whose prompt is ``prompt`` itself (ignoring case and spacing) is
        skipped: a question asked again must not be answered from memory. Ties go to the
        newer entry. The TF-IDF index over the candidates is kept until new feedback arrives.
        """
        if k <= 0:
            return []
        candidates = self._example_index()
        pairs, normalized = candidates.pairs, candidates.normalized
        asked = _normalized(prompt)
        scores = candidates.tfidf.similarities(prompt)
        # the best k, plus as many as there are candidates that are the question itself; newer first among ties
        wanted = k + candidates.prompt_counts[asked]
        ranked = heapq.nlargest(wanted, range(len(pairs)), key=lambda i: (scores[i], -i))
        found: list[FewShotExample] = []
        for i in ranked:
            if len(found) >= k or scores[i] <= 0.0:
                break
            if normalized[i] != asked:
                found.append(FewShotExample(pairs[i][0], pairs[i][1], scores[i]))
        return found

    def _example_index(self) -> _ExampleIndex:
        """The few-shot candidates and their TF-IDF index (cached; rebuilt within INDEX_BUILD_SHARE)."""
        with self._lock:
            latest = int(self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM feedback").fetchone()[0])
        with self._index_lock:
            stale = self._index is None or self._index.version != latest
            due = (self._index is None or self._index_cost_s < CHEAP_INDEX_BUILD_S
                   or time.monotonic() - self._index_built_at >= self._index_cost_s / INDEX_BUILD_SHARE)
            if stale and due:
                started = time.monotonic()
                self._index = _ExampleIndex.build(latest, _verified_pairs(self._verified_rows(MAX_EXAMPLE_CANDIDATES)))
                self._index_built_at = time.monotonic()
                self._index_cost_s = self._index_built_at - started
            assert self._index is not None
            return self._index

    def _verified_rows(self, limit: int | None) -> list[tuple[str, str, str, str]]:
        marks = ", ".join("?" for _ in EVIDENCE_SOURCES)
        with self._lock:
            return self._db.execute(
                f"SELECT prompt, answer, verdict, correct_answer FROM feedback WHERE source IN ({marks}) "
                "AND verdict IN ('CORRECT', 'WRONG') "
                "AND length(prompt) + length(answer) + length(correct_answer) <= ? "
                "ORDER BY received_at DESC, rowid DESC LIMIT ?",
                (*EVIDENCE_SOURCES, MAX_EXAMPLE_CHARS, -1 if limit is None else limit),
            ).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


SHORT_ANSWER_CHARS = 160
"""A WRONG entry is turned into a corrected pair ("Answer: <truth>") only when the node's own answer
was this short: where the node had worked through steps, a bare corrected number would teach it to
skip its reasoning. Measured on GSM8K (dellm bench gsm8k): with such pairs as few-shot examples the
1.5B node fell from 12/29 to 2/30 right, answering "Answer: N" without working."""


def _verified_pairs(rows: Sequence[tuple[str, str, str, str]]) -> list[tuple[str, str]]:
    """(prompt, answer) from verified rows given newest first; the newest usable entry per prompt wins."""
    pairs: dict[str, str] = {}
    for prompt, answer, verdict, correct_answer in rows:
        if not prompt.strip() or prompt in pairs:
            continue
        if verdict == "CORRECT" and answer.strip():
            pairs[prompt] = answer
        elif verdict == "WRONG" and correct_answer.strip() and len(answer.strip()) <= SHORT_ANSWER_CHARS:
            truth = correct_answer.strip()
            pairs[prompt] = truth if truth.startswith("Answer:") else f"Answer: {truth}"
        # An entry without a usable answer contributes nothing, so it does not hide an older pair.
    return list(pairs.items())


def _normalized(text: str) -> str:
    return " ".join(text.split()).casefold()


def word_tokens(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits; punctuation and underscores split words)."""
    return _WORD.findall(text.lower())


def _terms(text: str) -> Counter[str]:
    return Counter(t for t in word_tokens(text) if t not in STOP_WORDS)


@dataclass(frozen=True)
class _ExampleIndex:
    """The few-shot candidates as of feedback row ``version``: (prompt, answer) pairs newest first, their
    normalized prompts, how often each normalized prompt occurs, and a TF-IDF index over the prompts."""

    version: int
    pairs: list[tuple[str, str]]
    normalized: list[str]
    prompt_counts: Counter[str]
    tfidf: TfidfIndex

    @classmethod
    def build(cls, version: int, pairs: list[tuple[str, str]]) -> _ExampleIndex:
        normalized = [_normalized(prompt) for prompt, _ in pairs]
        return cls(version, pairs, normalized, Counter(normalized), TfidfIndex([prompt for prompt, _ in pairs]))


class TfidfIndex:
    """TF-IDF vectors of a fixed list of documents, for cosine similarity against any query.

    Terms are :func:`word_tokens` less :data:`STOP_WORDS`. Term frequency is the raw count;
    inverse document frequency is smoothed, ``ln((1 + n) / (1 + df)) + 1``, so a word found
    in every document still counts a little, and one found in none (only in the query)
    weighs most but matches nothing. Built once, an index answers a query by walking the
    postings of the query's terms only.
    """

    def __init__(self, documents: Sequence[str]) -> None:
        counts = [_terms(d) for d in documents]
        frequency: Counter[str] = Counter()
        for c in counts:
            frequency.update(c.keys())
        self._size = len(counts)
        self._idf = {t: math.log((1 + self._size) / (1 + df)) + 1.0 for t, df in frequency.items()}
        self._unseen_idf = math.log(1 + self._size) + 1.0
        self._postings: dict[str, list[tuple[int, float]]] = {}
        norms: list[float] = []
        for index, c in enumerate(counts):
            weights = {t: f * self._idf[t] for t, f in c.items()}
            for term, weight in weights.items():
                self._postings.setdefault(term, []).append((index, weight))
            norms.append(math.sqrt(sum(w * w for w in weights.values())))
        self._norms = norms

    def similarities(self, query: str) -> list[float]:
        """Cosine similarity of ``query`` with each document, in document order."""
        weights = {t: f * self._idf.get(t, self._unseen_idf) for t, f in _terms(query).items()}
        query_norm = math.sqrt(sum(w * w for w in weights.values()))
        dots = [0.0] * self._size
        if query_norm == 0.0:
            return dots
        for term, weight in weights.items():
            for index, document_weight in self._postings.get(term, ()):
                dots[index] += weight * document_weight
        return [dot / (query_norm * self._norms[i]) if dot else 0.0 for i, dot in enumerate(dots)]


def tfidf_similarities(query: str, documents: Sequence[str]) -> list[float]:
    """Cosine similarity between ``query`` and each document, in the :class:`TfidfIndex` of ``documents``."""
    return TfidfIndex(documents).similarities(query)
