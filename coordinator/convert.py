"""Protobuf <-> dataclass conversion for the coordinator: the one module that knows both."""

from __future__ import annotations

from dellm.coordinator.config import RouteConfig
from dellm.coordinator.pipeline.route import quarantined
from dellm.coordinator.types import (
    AnswerToken,
    AppliedReward,
    ChunkAssembled,
    ChunkAssigned,
    ChunkResult,
    ChunkToken,
    NodeRecord,
    PipelineEvent,
    PlanReady,
    QueryFinished,
    Verdict,
)
from dellm.protos import dellm_pb2
from dellm.protos.wire import description_to_proto

OPERATION_NAMES = frozenset(dellm_pb2.Operation.keys())
VERDICTS = {Verdict.UNKNOWN: dellm_pb2.VERDICT_UNSPECIFIED, Verdict.CORRECT: dellm_pb2.CORRECT,
            Verdict.WRONG: dellm_pb2.WRONG}


def reward_to_proto(applied: AppliedReward) -> dellm_pb2.NodeReward:
    d = applied.decision
    return dellm_pb2.NodeReward(node_id=d.node_id, chunk_id=d.chunk_id, verdict=VERDICTS[d.verdict], reward=d.reward,
                                fitness_before=applied.fitness_before, fitness_after=applied.fitness_after,
                                source=d.source)


def _chunk_result(result: ChunkResult) -> dellm_pb2.ChunkResultEvent:
    return dellm_pb2.ChunkResultEvent(
        chunk_id=result.chunk.chunk_id,
        answer=result.answer,
        winner_node_id=result.winner_node_id,
        votes=[
            dellm_pb2.Vote(node_id=v.node_id, answer=v.answer, normalized=v.normalized, confidence=v.confidence,
                           fitness=v.fitness, weight=v.weight, latency_ms=v.latency_ms, failed=v.group < 0,
                           error=v.error or "", program=v.program)
            for v in result.votes
        ],
        unanimous=result.unanimous,
        agreement=result.agreement,
        groups=result.groups,
        cancelled_node_ids=result.cancelled,
        value=result.value,
        checked_by=result.checked_by,
    )


def event_to_proto(event: PipelineEvent) -> dellm_pb2.AskEvent:
    match event:
        case PlanReady(query_id=query_id, plan=plan, planner=planner):
            return dellm_pb2.AskEvent(plan=dellm_pb2.PlanEvent(query_id=query_id, planner=planner, chunks=[
                dellm_pb2.PlannedChunk(chunk_id=c.chunk_id, operation=dellm_pb2.Operation.Value(c.operation.value),
                                       text=c.text, token_count=c.token_count, complexity=c.complexity,
                                       depends_on=c.depends_on)
                for c in plan.chunks
            ]))
        case ChunkAssigned(assignment=a):
            return dellm_pb2.AskEvent(assignment=dellm_pb2.AssignmentEvent(
                chunk_id=a.chunk_id, node_ids=a.node_ids, retry=a.retry, reason=a.reason))
        case ChunkToken(chunk_id=chunk_id, node_id=node_id, text=text, tokens=tokens):
            return dellm_pb2.AskEvent(chunk_token=dellm_pb2.ChunkTokenEvent(chunk_id=chunk_id, node_id=node_id,
                                                                            text=text, tokens=tokens))
        case ChunkAssembled(result=result):
            return dellm_pb2.AskEvent(chunk_result=_chunk_result(result))
        case AnswerToken(text=text):
            return dellm_pb2.AskEvent(answer_token=dellm_pb2.AnswerTokenEvent(text=text))
        case QueryFinished():
            return dellm_pb2.AskEvent(final=dellm_pb2.FinalEvent(
                query_id=event.query_id,
                answer=event.answer,
                synthesis=event.synthesis,
                chunks=[
                    dellm_pb2.ChunkProvenance(
                        chunk_id=r.chunk.chunk_id, operation=dellm_pb2.Operation.Value(r.chunk.operation.value),
                        text=r.chunk.text, answer=r.answer, node_ids=event.node_ids_by_chunk.get(r.chunk.chunk_id, ()),
                        winner_node_id=r.winner_node_id, unanimous=r.unanimous, agreement=r.agreement,
                        checked_by=r.checked_by)
                    for r in event.results
                ],
                timings=[dellm_pb2.StageTiming(stage=t.stage, ms=t.ms) for t in event.timings],
                rewards=[reward_to_proto(r) for r in event.rewards],
                total_ms=event.total_ms,
                checked_by=event.checked_by,
                feedback_token=event.feedback_token,
            ))
    raise TypeError(f"not a pipeline event: {event!r}")


def node_status_to_proto(record: NodeRecord, in_flight: int, route: RouteConfig | None = None,
                         canaries: tuple[int, int] = (0, 0)) -> dellm_pb2.NodeStatus:
    """A node as ListNodes shows it: ``route`` decides which operations it is quarantined from, and
    ``canaries`` is (passed, failed) since the coordinator started."""
    route = route or RouteConfig()
    operations = [
        dellm_pb2.OperationStatus(operation=dellm_pb2.Operation.Value(op), fitness=stats.fitness, trials=stats.trials,
                                  successes=stats.successes, quarantined=quarantined(record, op, route))
        for op, stats in sorted(record.op_stats.items()) if op in OPERATION_NAMES
    ]
    return dellm_pb2.NodeStatus(
        info=description_to_proto(record.info), fitness=record.fitness,
        latency_ms=record.latency_ms if record.latency_ms is not None else 0.0, in_flight=in_flight,
        last_seen_unix=record.last_seen, state=record.state, answers=record.answers, correct=record.correct,
        failures=record.failures, operations=operations, canaries_passed=canaries[0], canaries_failed=canaries[1],
    )
