"""Plain data the coordinator's stages pass between each other.

Everything here is a frozen dataclass: stages 1, 2, 4 and 6 are pure functions over
these, so they are tested with tables of cases and no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from dellm.coordinator.pipeline.operations import Operation
from dellm.protos.wire import NodeDescription, NodeState


class Verdict(StrEnum):
    UNKNOWN = "UNKNOWN"
    CORRECT = "CORRECT"
    WRONG = "WRONG"


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    operation: Operation
    text: str
    token_count: int
    complexity: float
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    query: str
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class OpStats:
    fitness: float
    trials: int = 0  # answers judged (with a verdict) at this operation type
    successes: int = 0


@dataclass(frozen=True)
class NodeRecord:
    """A node as the registry knows it: description plus learned figures."""

    info: NodeDescription
    fitness: float = 0.5
    latency_ms: float | None = None  # moving average of whole-answer time; None until measured
    state: str = NodeState.UP  # up | down | gone (evicted)
    last_seen: float = 0.0
    answers: int = 0
    correct: int = 0
    failures: int = 0
    failure_streak: int = 0  # failed streams since the last good one
    # Per operation type (MATH_OP, SEARCH_OP, ...): a node good at math need not be good at search.
    op_stats: dict[str, OpStats] = field(default_factory=dict)

    def fitness_for(self, operation: str) -> float:
        """Fitness at this kind of work; the overall fitness until the node has been judged at it."""
        stats = self.op_stats.get(operation)
        return stats.fitness if stats is not None and stats.trials else self.fitness

    @property
    def node_id(self) -> str:
        return self.info.node_id


@dataclass(frozen=True)
class Assignment:
    chunk_id: str
    node_ids: tuple[str, ...]
    retry: bool = False
    reason: str = ""


@dataclass(frozen=True)
class NodeAnswer:
    chunk_id: str
    node_id: str
    text: str
    confidence: float
    latency_ms: float
    first_token_ms: float | None = None
    tokens: int = 0
    finish_reason: str = ""
    error: str | None = None  # set when the stream failed; text is then what arrived before
    # Math chunks: the number the node is judged by (what its own program computed, else what it
    # stated), and how that number was found (see pipeline/execute.py).
    value: float | None = None
    program: str = ""
    program_failed: bool = False  # its program was refused, failed or computed no number: a wrong answer, judged
    prompt: str = ""  # the prompt this answer was asked with, when not the chunk's own (a sample asked another way)
    sample: int = -1  # its place in a self-consistency plan (pipeline/consistency.py); -1: none
    temperature: float = 0.0  # a sample's temperature, as asked (0: greedy)
    family: str = ""  # a sample's kind of evidence: "words" or "program" (pipeline/consistency.py); "": none

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Vote:
    node_id: str
    answer: str
    normalized: str
    confidence: float
    fitness: float
    weight: float
    latency_ms: float
    group: int  # index of the answer group; -1 for failed or empty answers
    error: str | None = None
    program: str = ""  # math chunks: what the node's own program computed, or why it did not run


@dataclass(frozen=True)
class ChunkResult:
    chunk: Chunk
    answer: str
    winner_node_id: str
    votes: tuple[Vote, ...]
    unanimous: bool
    agreement: float  # the winning group's share of the total vote weight
    groups: int
    cancelled: tuple[str, ...] = ()  # redundant streams stopped once the chunk was settled
    value: float | None = None  # math chunks: the number the result states
    expected: float | None = None  # the exact value the coordinator computed for the chunk, if it could
    # "coordinator": no node's answer matched ``expected`` (even after escalation), so ``expected`` is served;
    # "exact_check": a node's answer matched it; "": nothing could check the result.
    checked_by: str = ""
    # The index of the winning group among the votes; -1: read it from the winner's vote (a node that answered
    # twice, as in self-consistency, may have votes in two groups, so assemble sets it).
    winner_group: int = -1

    @property
    def winning_group(self) -> int:
        if self.winner_group >= 0:
            return self.winner_group
        return next((v.group for v in self.votes if v.node_id == self.winner_node_id), -1)

    @property
    def winning_node_ids(self) -> tuple[str, ...]:
        """The nodes of the winning group, each once."""
        group = self.winning_group
        return tuple(dict.fromkeys(v.node_id for v in self.votes if v.group == group and v.group >= 0))


@dataclass(frozen=True)
class RewardDecision:
    """Stage 6's verdict on one node answer (before it is applied to the registry)."""

    node_id: str
    chunk_id: str
    verdict: Verdict
    reward: float
    source: str  # a FeedbackSource (dellm.protos.wire)
    correct_answer: str = ""


@dataclass(frozen=True)
class AppliedReward:
    decision: RewardDecision
    fitness_before: float
    fitness_after: float


@dataclass(frozen=True)
class StageTiming:
    stage: str
    ms: float


# --- What the coordinator sends a node, and what comes back (node_client turns them into protobuf) ---


@dataclass(frozen=True)
class ChunkRequest:
    query_id: str
    chunk_id: str
    operation: Operation
    prompt: str
    max_tokens: int
    temperature: float
    system: str = ""
    seed: int = 0  # sampling seed when temperature > 0; 0: the node's own
    sample: int = -1  # its place in a self-consistency plan; -1: not a sample
    family: str = ""  # the kind of evidence its method gives: "words" or "program"; "": not a sample


@dataclass(frozen=True)
class StreamPiece:
    text: str
    logprobs: tuple[float, ...]
    done: bool = False
    finish_reason: str = ""
    confidence: float = 0.0


@dataclass(frozen=True)
class NodeFeedback:
    query_id: str
    chunk_id: str
    prompt: str
    answer: str
    verdict: Verdict
    reward: float
    correct_answer: str
    fitness: float
    source: str


# --- Events streamed by the pipeline (the servicer turns them into AskEvent) ---


@dataclass(frozen=True)
class PlanReady:
    query_id: str
    plan: Plan
    planner: str = "rules"


@dataclass(frozen=True)
class ChunkAssigned:
    assignment: Assignment


@dataclass(frozen=True)
class ChunkToken:
    chunk_id: str
    node_id: str
    text: str
    tokens: int = 1  # model tokens in ``text`` (pieces that waited together are sent as one)


@dataclass(frozen=True)
class ChunkAssembled:
    result: ChunkResult


@dataclass(frozen=True)
class AnswerToken:
    text: str


@dataclass(frozen=True)
class QueryFinished:
    query_id: str
    answer: str
    synthesis: str
    results: tuple[ChunkResult, ...]
    rewards: tuple[AppliedReward, ...]
    timings: tuple[StageTiming, ...]
    total_ms: float
    node_ids_by_chunk: dict[str, tuple[str, ...]] = field(default_factory=dict)
    feedback_token: str = ""  # the asker's proof for the Feedback RPC (set by the coordinator, never by a stage)

    @property
    def checked_by(self) -> str:
        """"coordinator" when any chunk's served value is the coordinator's own (no node agreed with it)."""
        return "coordinator" if any(r.checked_by == "coordinator" for r in self.results) else ""


PipelineEvent = PlanReady | ChunkAssigned | ChunkToken | ChunkAssembled | AnswerToken | QueryFinished
