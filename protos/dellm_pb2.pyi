from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_UNSPECIFIED: _ClassVar[Operation]
    MATH_OP: _ClassVar[Operation]
    SEARCH_OP: _ClassVar[Operation]
    COMPARE_OP: _ClassVar[Operation]
    GENERATE_OP: _ClassVar[Operation]
    GENERAL_OP: _ClassVar[Operation]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    CORRECT: _ClassVar[Verdict]
    WRONG: _ClassVar[Verdict]
OPERATION_UNSPECIFIED: Operation
MATH_OP: Operation
SEARCH_OP: Operation
COMPARE_OP: Operation
GENERATE_OP: Operation
GENERAL_OP: Operation
VERDICT_UNSPECIFIED: Verdict
CORRECT: Verdict
WRONG: Verdict

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "name", "address", "model", "backend", "quantization", "context_size", "hardware", "version", "model_sha256", "protocol_version", "cluster", "token_required")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_SIZE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    address: str
    model: str
    backend: str
    quantization: str
    context_size: int
    hardware: str
    version: str
    model_sha256: str
    protocol_version: int
    cluster: str
    token_required: bool
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., quantization: _Optional[str] = ..., context_size: _Optional[int] = ..., hardware: _Optional[str] = ..., version: _Optional[str] = ..., model_sha256: _Optional[str] = ..., protocol_version: _Optional[int] = ..., cluster: _Optional[str] = ..., token_required: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("query_id", "chunk_id", "operation", "prompt", "max_tokens", "temperature", "stop", "system", "seed")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    chunk_id: str
    operation: Operation
    prompt: str
    max_tokens: int
    temperature: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    system: str
    seed: int
    def __init__(self, query_id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., prompt: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., system: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("text", "logprobs", "done", "finish_reason", "confidence", "completion_tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    done: bool
    finish_reason: str
    confidence: float
    completion_tokens: int
    def __init__(self, text: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., done: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., confidence: _Optional[float] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class NodeFeedbackRequest(_message.Message):
    __slots__ = ("query_id", "chunk_id", "prompt", "answer", "verdict", "reward", "correct_answer", "fitness", "source")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    CORRECT_ANSWER_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    chunk_id: str
    prompt: str
    answer: str
    verdict: Verdict
    reward: float
    correct_answer: str
    fitness: float
    source: str
    def __init__(self, query_id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., prompt: _Optional[str] = ..., answer: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reward: _Optional[float] = ..., correct_answer: _Optional[str] = ..., fitness: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class NodeFeedbackBatch(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NodeFeedbackRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[NodeFeedbackRequest, _Mapping]]] = ...) -> None: ...

class NodeFeedbackReply(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    def __init__(self, stored: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("query", "reference_answer")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    query: str
    reference_answer: str
    def __init__(self, query: _Optional[str] = ..., reference_answer: _Optional[str] = ...) -> None: ...

class PlannedChunk(_message.Message):
    __slots__ = ("chunk_id", "operation", "text", "token_count", "complexity", "depends_on")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPLEXITY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    operation: Operation
    text: str
    token_count: int
    complexity: float
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chunk_id: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., text: _Optional[str] = ..., token_count: _Optional[int] = ..., complexity: _Optional[float] = ..., depends_on: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanEvent(_message.Message):
    __slots__ = ("query_id", "chunks", "planner")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PLANNER_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    chunks: _containers.RepeatedCompositeFieldContainer[PlannedChunk]
    planner: str
    def __init__(self, query_id: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[PlannedChunk, _Mapping]]] = ..., planner: _Optional[str] = ...) -> None: ...

class AssignmentEvent(_message.Message):
    __slots__ = ("chunk_id", "node_ids", "retry", "reason")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    retry: bool
    reason: str
    def __init__(self, chunk_id: _Optional[str] = ..., node_ids: _Optional[_Iterable[str]] = ..., retry: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ChunkTokenEvent(_message.Message):
    __slots__ = ("chunk_id", "node_id", "text", "tokens")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    node_id: str
    text: str
    tokens: int
    def __init__(self, chunk_id: _Optional[str] = ..., node_id: _Optional[str] = ..., text: _Optional[str] = ..., tokens: _Optional[int] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("node_id", "answer", "normalized", "confidence", "fitness", "weight", "latency_ms", "failed", "error", "program")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    answer: str
    normalized: str
    confidence: float
    fitness: float
    weight: float
    latency_ms: float
    failed: bool
    error: str
    program: str
    def __init__(self, node_id: _Optional[str] = ..., answer: _Optional[str] = ..., normalized: _Optional[str] = ..., confidence: _Optional[float] = ..., fitness: _Optional[float] = ..., weight: _Optional[float] = ..., latency_ms: _Optional[float] = ..., failed: _Optional[bool] = ..., error: _Optional[str] = ..., program: _Optional[str] = ...) -> None: ...

class ChunkResultEvent(_message.Message):
    __slots__ = ("chunk_id", "answer", "winner_node_id", "votes", "unanimous", "agreement", "groups", "cancelled_node_ids", "value", "checked_by")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    WINNER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    UNANIMOUS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_BY_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    answer: str
    winner_node_id: str
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    unanimous: bool
    agreement: float
    groups: int
    cancelled_node_ids: _containers.RepeatedScalarFieldContainer[str]
    value: float
    checked_by: str
    def __init__(self, chunk_id: _Optional[str] = ..., answer: _Optional[str] = ..., winner_node_id: _Optional[str] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., unanimous: _Optional[bool] = ..., agreement: _Optional[float] = ..., groups: _Optional[int] = ..., cancelled_node_ids: _Optional[_Iterable[str]] = ..., value: _Optional[float] = ..., checked_by: _Optional[str] = ...) -> None: ...

class AnswerTokenEvent(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class NodeReward(_message.Message):
    __slots__ = ("node_id", "chunk_id", "verdict", "reward", "fitness_before", "fitness_after", "source")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FITNESS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    FITNESS_AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    chunk_id: str
    verdict: Verdict
    reward: float
    fitness_before: float
    fitness_after: float
    source: str
    def __init__(self, node_id: _Optional[str] = ..., chunk_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., reward: _Optional[float] = ..., fitness_before: _Optional[float] = ..., fitness_after: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    ms: float
    def __init__(self, stage: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class ChunkProvenance(_message.Message):
    __slots__ = ("chunk_id", "operation", "text", "answer", "node_ids", "winner_node_id", "unanimous", "agreement", "checked_by")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    WINNER_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    UNANIMOUS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    CHECKED_BY_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    operation: Operation
    text: str
    answer: str
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    winner_node_id: str
    unanimous: bool
    agreement: float
    checked_by: str
    def __init__(self, chunk_id: _Optional[str] = ..., operation: _Optional[_Union[Operation, str]] = ..., text: _Optional[str] = ..., answer: _Optional[str] = ..., node_ids: _Optional[_Iterable[str]] = ..., winner_node_id: _Optional[str] = ..., unanimous: _Optional[bool] = ..., agreement: _Optional[float] = ..., checked_by: _Optional[str] = ...) -> None: ...

class FinalEvent(_message.Message):
    __slots__ = ("query_id", "answer", "synthesis", "chunks", "timings", "rewards", "total_ms", "checked_by", "feedback_token")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_BY_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    answer: str
    synthesis: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkProvenance]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    rewards: _containers.RepeatedCompositeFieldContainer[NodeReward]
    total_ms: float
    checked_by: str
    feedback_token: str
    def __init__(self, query_id: _Optional[str] = ..., answer: _Optional[str] = ..., synthesis: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkProvenance, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., rewards: _Optional[_Iterable[_Union[NodeReward, _Mapping]]] = ..., total_ms: _Optional[float] = ..., checked_by: _Optional[str] = ..., feedback_token: _Optional[str] = ...) -> None: ...

class AskEvent(_message.Message):
    __slots__ = ("plan", "assignment", "chunk_token", "chunk_result", "answer_token", "final")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_RESULT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    plan: PlanEvent
    assignment: AssignmentEvent
    chunk_token: ChunkTokenEvent
    chunk_result: ChunkResultEvent
    answer_token: AnswerTokenEvent
    final: FinalEvent
    def __init__(self, plan: _Optional[_Union[PlanEvent, _Mapping]] = ..., assignment: _Optional[_Union[AssignmentEvent, _Mapping]] = ..., chunk_token: _Optional[_Union[ChunkTokenEvent, _Mapping]] = ..., chunk_result: _Optional[_Union[ChunkResultEvent, _Mapping]] = ..., answer_token: _Optional[_Union[AnswerTokenEvent, _Mapping]] = ..., final: _Optional[_Union[FinalEvent, _Mapping]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("query_id", "correct", "answer", "feedback_token")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query_id: str
    correct: bool
    answer: str
    feedback_token: str
    def __init__(self, query_id: _Optional[str] = ..., correct: _Optional[bool] = ..., answer: _Optional[str] = ..., feedback_token: _Optional[str] = ...) -> None: ...

class FeedbackReply(_message.Message):
    __slots__ = ("rewards",)
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedCompositeFieldContainer[NodeReward]
    def __init__(self, rewards: _Optional[_Iterable[_Union[NodeReward, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("info", "fitness", "latency_ms", "in_flight", "last_seen_unix", "state", "answers", "correct", "failures", "operations", "canaries_passed", "canaries_failed")
    INFO_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CANARIES_PASSED_FIELD_NUMBER: _ClassVar[int]
    CANARIES_FAILED_FIELD_NUMBER: _ClassVar[int]
    info: NodeInfo
    fitness: float
    latency_ms: float
    in_flight: int
    last_seen_unix: float
    state: str
    answers: int
    correct: int
    failures: int
    operations: _containers.RepeatedCompositeFieldContainer[OperationStatus]
    canaries_passed: int
    canaries_failed: int
    def __init__(self, info: _Optional[_Union[NodeInfo, _Mapping]] = ..., fitness: _Optional[float] = ..., latency_ms: _Optional[float] = ..., in_flight: _Optional[int] = ..., last_seen_unix: _Optional[float] = ..., state: _Optional[str] = ..., answers: _Optional[int] = ..., correct: _Optional[int] = ..., failures: _Optional[int] = ..., operations: _Optional[_Iterable[_Union[OperationStatus, _Mapping]]] = ..., canaries_passed: _Optional[int] = ..., canaries_failed: _Optional[int] = ...) -> None: ...

class OperationStatus(_message.Message):
    __slots__ = ("operation", "fitness", "trials", "successes", "quarantined")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    fitness: float
    trials: int
    successes: int
    quarantined: bool
    def __init__(self, operation: _Optional[_Union[Operation, str]] = ..., fitness: _Optional[float] = ..., trials: _Optional[int] = ..., successes: _Optional[int] = ..., quarantined: _Optional[bool] = ...) -> None: ...

class ListNodesReply(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("info", "node_secret")
    INFO_FIELD_NUMBER: _ClassVar[int]
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    info: NodeInfo
    node_secret: str
    def __init__(self, info: _Optional[_Union[NodeInfo, _Mapping]] = ..., node_secret: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("node_id", "fitness")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FITNESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    fitness: float
    def __init__(self, node_id: _Optional[str] = ..., fitness: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("node_id", "node_secret", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_SECRET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_secret: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., node_secret: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("replay",)
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    replay: bool
    def __init__(self, replay: _Optional[bool] = ...) -> None: ...

class QuerySummary(_message.Message):
    __slots__ = ("query", "client", "outcome", "error", "started_unix", "total_ms", "first_token_ms", "plan", "final", "retries", "hedges")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    HEDGES_FIELD_NUMBER: _ClassVar[int]
    query: str
    client: str
    outcome: str
    error: str
    started_unix: float
    total_ms: float
    first_token_ms: float
    plan: PlanEvent
    final: FinalEvent
    retries: int
    hedges: int
    def __init__(self, query: _Optional[str] = ..., client: _Optional[str] = ..., outcome: _Optional[str] = ..., error: _Optional[str] = ..., started_unix: _Optional[float] = ..., total_ms: _Optional[float] = ..., first_token_ms: _Optional[float] = ..., plan: _Optional[_Union[PlanEvent, _Mapping]] = ..., final: _Optional[_Union[FinalEvent, _Mapping]] = ..., retries: _Optional[int] = ..., hedges: _Optional[int] = ...) -> None: ...
