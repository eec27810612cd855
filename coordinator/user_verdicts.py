"""A user's verdicts on a query (the Feedback RPC): only its asker may give them, and each counts once.

- The asker proves it asked: the query's final event carries a random feedback token, and the query
  record keeps only its SHA-256 digest. Nodes see query ids (in every GenerateRequest) but never the
  token, so a node cannot judge the queries it answered, nor replay feedback on them.
- Each (query, chunk, node) holds at most one user verdict. Giving the same one again changes
  nothing; giving the other one replaces it: the fitness change the first one made is taken back
  before the new one is applied, so that 20 replays of "correct" move a node's fitness once.
- The right answer a user gives is bounded (``MAX_USER_ANSWER_CHARS``): it becomes the node's
  few-shot example and training pair.

The verdicts given so far live in the query record (``detail["user_verdicts"]``), written with it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dellm.coordinator.config import RewardConfig
from dellm.coordinator.errors import InvalidQueryError, NotOwnerError
from dellm.coordinator.identity import proves, secret_digest
from dellm.coordinator.pipeline.reward import update_fitness
from dellm.coordinator.registry.base import QueryRecord
from dellm.coordinator.types import Verdict

TOKEN_KEY = "feedback_token_sha256"
VERDICTS_KEY = "user_verdicts"
MAX_USER_ANSWER_CHARS = 2000  # a right answer is a sentence or a number, not a document


def with_feedback_token(record: QueryRecord) -> tuple[QueryRecord, str]:
    """``record`` holding the digest of a new feedback token, and the token (for the asker alone)."""
    token = secrets.token_urlsafe(32)
    return replace(record, detail={**record.detail, TOKEN_KEY: secret_digest(token)}), token


def check_feedback(record: QueryRecord, token: str, answer: str) -> None:
    """NotOwnerError unless ``token`` is the query's feedback token; InvalidQueryError for an over-long answer."""
    digest = record.detail.get(TOKEN_KEY)
    if not isinstance(digest, str) or not proves(token, digest):
        raise NotOwnerError(f"feedback on query {record.query_id} is taken only from the client that asked it, "
                            "with the feedback token its answer carried (`dellm ask` keeps it for `dellm feedback`)")
    if len(answer) > MAX_USER_ANSWER_CHARS:
        raise InvalidQueryError(f"the answer given is {len(answer)} characters; the most a right answer may be "
                                f"is {MAX_USER_ANSWER_CHARS}")


@dataclass(frozen=True)
class UserVerdict:
    """One winning node answer of the query, and the user verdict it already holds (if any)."""

    chunk_id: str
    node_id: str
    operation: str
    prompt: str
    text: str
    latency_ms: float
    previous: Verdict | None
    previous_delta: float  # the fitness change the previous verdict made (0.0 without one)

    @property
    def key(self) -> str:
        return f"{self.chunk_id}/{self.node_id}"


def winning_answers(record: QueryRecord) -> list[UserVerdict]:
    """The answers a verdict on the whole query judges: each chunk's winning group."""
    given: dict[str, Any] = record.detail.get(VERDICTS_KEY, {})
    found = []
    for chunk in record.detail["chunks"]:
        for answer in chunk["answers"]:
            if not answer["in_winning_group"]:
                continue
            previous = given.get(f"{chunk['chunk_id']}/{answer['node_id']}")
            found.append(UserVerdict(
                chunk["chunk_id"], answer["node_id"], chunk["operation"], chunk["prompt"], answer["text"],
                answer["latency_ms"], Verdict(previous["verdict"]) if previous else None,
                float(previous["delta"]) if previous else 0.0))
    return found


def replacing(previous_delta: float, reward: float, config: RewardConfig) -> Callable[[float], float]:
    """The fitness update of a verdict that replaces one which moved fitness by ``previous_delta``."""
    def update(fitness: float) -> float:
        return update_fitness(min(1.0, max(0.0, fitness - previous_delta)), reward, config)
    return update


def recorded(record: QueryRecord, verdicts: dict[str, tuple[Verdict, float]]) -> QueryRecord:
    """``record`` holding the verdicts given (key -> verdict and the fitness change it made)."""
    given = dict(record.detail.get(VERDICTS_KEY, {}))
    given.update({key: {"verdict": verdict.value, "delta": delta} for key, (verdict, delta) in verdicts.items()})
    return replace(record, detail={**record.detail, VERDICTS_KEY: given})
