"""The one function that composes the six stages into an answered query."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from dellm.coordinator.config import CoordinatorConfig, RewardConfig, RouteConfig
from dellm.coordinator.errors import ChunkFailedError, NoNodesAvailableError, UnknownNodeError
from dellm.coordinator.pipeline.answers import exact_answer, format_number, reference_key
from dellm.coordinator.pipeline.assemble import AssemblyError, assemble_chunk, is_settled, unusable
from dellm.coordinator.pipeline.consistency import consistency_settled, first_answer_settles, sample_requests
from dellm.coordinator.pipeline.decompose import decompose, validate_plan
from dellm.coordinator.pipeline.dispatch import ChunkDispatch, NodeConnector
from dellm.coordinator.pipeline.execute import judge_by_program
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.planner import ModelPlanner
from dellm.coordinator.pipeline.prompts import build_chunk_prompt, max_tokens_for, system_prompt_for
from dellm.coordinator.pipeline.reward import judge_chunk, update_fitness
from dellm.coordinator.pipeline.route import (
    OperationLatencies,
    Shortlist,
    clearly_strongest_model,
    model_of,
    redundancy_for,
    strongest_model,
)
from dellm.coordinator.pipeline.synthesize import Synthesizer
from dellm.coordinator.registry.base import NodeRegistry, NodeTable, QueryRecord
from dellm.coordinator.sandbox import ProgramRunner
from dellm.coordinator.types import (
    AnswerToken,
    AppliedReward,
    Chunk,
    ChunkAssembled,
    ChunkRequest,
    ChunkResult,
    ChunkToken,
    NodeAnswer,
    NodeFeedback,
    PipelineEvent,
    Plan,
    PlanReady,
    QueryFinished,
    RewardDecision,
    StageTiming,
    Verdict,
)
from dellm.protos.wire import NodeState

log = logging.getLogger(__name__)

LATENCY_ALPHA = 0.3  # weight of the newest answer in a node's latency moving average


@dataclass(frozen=True)
class PipelineDeps:
    config: CoordinatorConfig
    registry: NodeRegistry
    connector: NodeConnector
    in_flight: dict[str, int]
    synthesizer: Synthesizer
    send_feedback: Callable[[str, NodeFeedback], None]  # node id, feedback; must not block
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # Thompson sampling's stream
    shortlist: Shortlist | None = None  # kept across queries by the coordinator: its rankings are reused
    planner: ModelPlanner | None = None  # None: the rule-based decomposer
    runner: ProgramRunner | None = None  # runs math answers' programs (the sandbox); None: stated numbers only
    latencies: OperationLatencies | None = None  # kept across queries: each node's time at each operation


def current_fitness(registry: NodeRegistry, answers: Iterable[NodeAnswer], operation: str) -> dict[str, float]:
    fitness = {}
    for answer in answers:
        with contextlib.suppress(UnknownNodeError):
            fitness[answer.node_id] = registry.get(answer.node_id).fitness_for(operation)
    return fitness


def _record_answer(deps: PipelineDeps, operation: str, answer: NodeAnswer) -> None:
    record = deps.registry.record_answer(answer.node_id, answer.latency_ms, failed=answer.failed,
                                         alpha=LATENCY_ALPHA)
    if deps.latencies is not None and not answer.failed and answer.sample < 0:  # a sample's length is its method's
        deps.latencies.record(answer.node_id, operation, answer.latency_ms)
    unreachable = answer.error is not None and answer.error.startswith("UNAVAILABLE")
    if answer.failed and (unreachable or record.failure_streak >= deps.config.node_down_after_failures):
        log.warning("node %s marked down after: %s", answer.node_id, answer.error)
        deps.registry.set_state(answer.node_id, NodeState.DOWN)


def expected_value(chunk: Chunk, dependencies: Sequence[ChunkResult]) -> float | None:
    """The exact value of a math chunk's arithmetic, with the result it depends on substituted
    ("multiply the result by 2" after 579 is 1158); None when it cannot be read exactly."""
    if chunk.operation is not Operation.MATH_OP:
        return None
    prior = dependencies[-1].value if dependencies else None
    return exact_answer(chunk.text, prior)


def known_in_advance(plan: Plan) -> dict[str, ChunkResult]:
    """The chunks whose result the coordinator knows before any node answers: arithmetic it computes
    exactly, through chains of such steps ("add 2 and 3, then double it"). A checked chunk's result always
    states that value (a node's matching answer, or the value itself when every answer contradicts it), so a
    step that depends only on such chunks can start at once instead of waiting for their nodes."""
    known: dict[str, ChunkResult] = {}
    for chunk in plan.chunks:
        if not all(d in known for d in chunk.depends_on):
            continue
        value = expected_value(chunk, [known[d] for d in chunk.depends_on])
        if value is not None:
            known[chunk.chunk_id] = ChunkResult(
                chunk=chunk, answer=f"Answer: {format_number(value)}", winner_node_id="", votes=(),
                unanimous=False, agreement=0.0, groups=0, value=value, expected=value, checked_by="coordinator")
    return known


def label_chunk_id(plan: Plan) -> str | None:
    """The chunk a whole-query label (benchmark ground truth) judges: the one chunk nothing depends on."""
    needed = {d for c in plan.chunks for d in c.depends_on}
    sinks = [c.chunk_id for c in plan.chunks if c.chunk_id not in needed]
    return sinks[0] if len(sinks) == 1 else None


async def answer_query(query: str, deps: PipelineDeps, label: str | None = None) -> AsyncIterator[PipelineEvent]:
    """Plan, route, dispatch, assemble, synthesize and reward one query, streaming events.

    ``label`` is a known right final answer (benchmark mode): it judges the final chunk.
    """
    config = deps.config
    started = time.perf_counter()
    timings: list[StageTiming] = []

    def lap(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings.append(StageTiming(stage, (now - since) * 1000))
        return now

    query_id = uuid.uuid4().hex[:16]
    if deps.planner is not None:
        plan, planner = await deps.planner.plan(query)
    else:
        plan, planner = decompose(query, config.decompose), "rules"
    validate_plan(plan)
    mark = lap("decompose", started)
    yield PlanReady(query_id, plan, planner)
    labels = {label_chunk_id(plan): label} if label else {}

    results: dict[str, ChunkResult] = {}
    answers: dict[str, list[NodeAnswer]] = {}
    prompts: dict[str, str] = {}
    done = {c.chunk_id: asyncio.Event() for c in plan.chunks}
    known = known_in_advance(plan)

    async def dependency(chunk_id: str) -> ChunkResult:
        """What a dependent chunk is told of an earlier one: its exact value at once when the coordinator
        computes it (the result will state that value whatever the nodes say), else its result when done."""
        if chunk_id in known:
            return known[chunk_id]
        await done[chunk_id].wait()
        return results[chunk_id]

    async def run_chunk(index: int, emit: Callable[[PipelineEvent], None]) -> None:
        chunk = plan.chunks[index]
        dependencies = [await dependency(d) for d in chunk.depends_on]
        result, answers[chunk.chunk_id], prompts[chunk.chunk_id] = await answer_chunk(
            chunk, dependencies, query_id, deps, labels.get(chunk.chunk_id), emit)
        results[chunk.chunk_id] = result
        emit(ChunkAssembled(result))
        done[chunk.chunk_id].set()

    async def run_chunks(emit: Callable[[PipelineEvent], None]) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(len(plan.chunks)):
                    group.create_task(run_chunk(index, emit))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from group_error

    async for event in _streamed(run_chunks):
        yield event
    mark = lap("dispatch+assemble", mark)

    ordered = tuple(results[c.chunk_id] for c in plan.chunks)
    synthesized: list[tuple[str, str]] = []

    async def run_synthesis(emit: Callable[[PipelineEvent], None]) -> None:
        synthesized.append(await deps.synthesizer.synthesize(plan.query, ordered, lambda t: emit(AnswerToken(t))))

    async for event in _streamed(run_synthesis):
        yield event
    answer, synthesis = synthesized[0]
    mark = lap("synthesize", mark)

    applied = _reward(deps, query_id, ordered, answers, prompts, labels)
    lap("reward", mark)
    total_ms = (time.perf_counter() - started) * 1000
    deps.registry.save_query(_query_record(query_id, plan.query, answer, ordered, answers, prompts))
    yield QueryFinished(query_id, answer, synthesis, ordered, tuple(applied), tuple(timings), total_ms,
                        {cid: tuple(a.node_id for a in lst) for cid, lst in answers.items()})


async def answer_chunk(
    chunk: Chunk,
    dependencies: Sequence[ChunkResult],
    query_id: str,
    deps: PipelineDeps,
    label: str | None,
    emit: Callable[[PipelineEvent], None],
) -> tuple[ChunkResult, list[NodeAnswer], str]:
    """Stages 3 and 4 for one chunk: its result, every node answer to it, and the prompt they saw.

    A math answer is judged by what its own program computes (pipeline/execute.py). When the
    coordinator's exact value contradicts every answer, or no answer to any chunk can be used at all, more
    nodes are asked (other models first); if none agrees with the exact value, the result is the
    coordinator's value and says so (never a value proven wrong), and if still no answer can be used, the
    chunk fails (ChunkFailedError, listing every node tried).
    """
    config = deps.config
    programs = deps.runner is not None
    expected = expected_value(chunk, dependencies)
    checkable = expected is not None
    prompt = build_chunk_prompt(chunk, dependencies, programs=programs, checkable=checkable)
    reference = reference_key(chunk.operation, expected, label)
    request = ChunkRequest(query_id, chunk.chunk_id, chunk.operation, prompt,
                           max_tokens_for(chunk, config.dispatch, programs=programs, checkable=checkable),
                           config.dispatch.temperature,
                           system_prompt_for(chunk, config.dispatch, programs=programs, checkable=checkable))
    # Word problems (math nothing can check exactly, no earlier result to use): a greedy program first, and
    # when it is in doubt, self-consistency over programs and worked steps, voted over the numbers they reach
    # (pipeline/consistency.py).
    word_problem = (programs and chunk.operation is Operation.MATH_OP and expected is None and not dependencies
                    and config.dispatch.samples > 1)
    wanted = redundancy_for(chunk, config.route, checked=checkable)

    async def judge(answer: NodeAnswer) -> NodeAnswer:
        return await judge_by_program(answer, chunk, deps.runner)

    dispatch = partial(
        ChunkDispatch, chunk, request, nodes=deps.registry.table, in_flight=deps.in_flight,
        connector=deps.connector, route_config=config.route, config=config.dispatch, emit=emit,
        on_answer=partial(_record_answer, deps, chunk.operation.value), rng=deps.rng, shortlist=deps.shortlist,
        latencies=deps.latencies, judge=judge,
        settled=partial(is_settled, chunk, wanted=wanted, reference=reference))
    if word_problem:
        chunk_answers, cancelled = await _self_consistency(chunk, sample_requests(chunk, request, config.dispatch),
                                                           dispatch, deps.registry.table(), config.route)
    else:
        outcome = await dispatch(count=wanted).run()
        chunk_answers, cancelled = list(outcome.answers), outcome.cancelled
    try:
        result: ChunkResult | None = _assembled(chunk, chunk_answers, deps, reference, expected, cancelled)
    except ChunkFailedError:
        # No answer could be used (empty, looping, the question repeated): other nodes are asked, as for a
        # wrong answer to checked arithmetic, rather than failing the whole query.
        result = None
    if (result is None or result.checked_by == "coordinator") and config.dispatch.escalation_nodes > 0:
        exclude = escalation_exclude(deps.registry.table(), {a.node_id for a in chunk_answers})
        why = "no usable answer" if result is None else f"no answer agrees with the exact value {expected}"
        log.info("chunk %s: %s; asking %d more node(s)", chunk.chunk_id, why, config.dispatch.escalation_nodes)
        escalation = dispatch(exclude=exclude, count=config.dispatch.escalation_nodes)
        # With the checked value in hand the wait is bounded; with no usable answer at all it is not.
        budget = config.dispatch.escalation_budget_s if result is not None else None
        try:
            more = await asyncio.wait_for(escalation.run(), budget)
        except NoNodesAvailableError:
            more = None
        except TimeoutError:
            late = [n for n in escalation.tried - exclude if n not in {a.node_id for a in escalation.answers}]
            log.info("chunk %s: %s not answered within the %.1f s escalation budget; the checked value is served",
                     chunk.chunk_id, ", ".join(late) or "the nodes asked", budget)
            chunk_answers += escalation.answers
            cancelled += tuple(late)
            more, result = None, None
        if more is not None:
            chunk_answers += more.answers
            cancelled += more.cancelled
            result = None
    if result is None:  # raises ChunkFailedError when still no answer is usable
        result = _assembled(chunk, chunk_answers, deps, reference, expected, cancelled)
    return result, chunk_answers, prompt


async def _self_consistency(chunk: Chunk, samples: Sequence[ChunkRequest], dispatch: Callable[..., ChunkDispatch],
                            table: NodeTable, route: RouteConfig) -> tuple[list[NodeAnswer], tuple[str, ...]]:
    """A word problem's answers (pipeline/consistency.py): the plan's first request (a greedy program) to a node of
    the strongest model alone, so that it has the cores to itself; when its answer is not plausible, the rest
    of the plan spread over every live node, until the vote is clear."""
    nodes = list(table)
    strongest = strongest_model(nodes, chunk.operation.value, route)
    weaker = frozenset(n.node_id for n in nodes if strongest is not None and model_of(n) != strongest)
    first = await dispatch(count=1, samples=samples[:1], exclude=weaker, settled=None).run()
    answers = list(first.answers)
    if first_answer_settles(chunk, answers) or len(samples) < 2:
        return answers, first.cancelled
    rest = samples[1:]

    def settled(later: Sequence[NodeAnswer]) -> bool:
        return consistency_settled(chunk, [*answers, *later], planned=len(samples))

    more = await dispatch(count=min(len(rest), max(len(nodes), 1)), samples=rest, settled=settled).run()
    return answers + list(more.answers), first.cancelled + more.cancelled


def escalation_exclude(table: NodeTable, tried: set[str]) -> frozenset[str]:
    """Who not to ask again: the nodes tried, and the nodes of the models tried while other models are live
    (a second copy of a model that was wrong adds agreement, not truth)."""
    models = {n.info.model for n in table if n.node_id in tried}
    others = [n for n in table if n.node_id not in tried]
    if any(n.info.model not in models for n in others):
        return frozenset(tried | {n.node_id for n in others if n.info.model in models})
    return frozenset(tried)


def strongest_nodes(registry: NodeRegistry, answers: Iterable[NodeAnswer], operation: str,
                    config: RouteConfig) -> frozenset[str]:
    """The answering nodes that run the clearly strongest model among those that answered
    (route.clearly_strongest_model); none when no model is (one model, or a tie)."""
    records = []
    for node_id in dict.fromkeys(a.node_id for a in answers):
        with contextlib.suppress(UnknownNodeError):
            records.append(registry.get(node_id))
    model = clearly_strongest_model(records, operation, config)
    return frozenset(r.node_id for r in records if model is not None and model_of(r) == model)


def _assembled(chunk: Chunk, answers: list[NodeAnswer], deps: PipelineDeps, reference: str | None,
               expected: float | None, cancelled: tuple[str, ...]) -> ChunkResult:
    operation = chunk.operation.value
    fitness = current_fitness(deps.registry, answers, operation)
    strongest = strongest_nodes(deps.registry, answers, operation, deps.config.route)
    try:
        return replace(assemble_chunk(chunk, answers, fitness, reference, expected, strongest), cancelled=cancelled)
    except AssemblyError as exc:
        tried = ", ".join(f"{a.node_id} ({unusable(chunk, a)})" for a in answers) or "none"
        raise ChunkFailedError(f"chunk {chunk.chunk_id} could not be answered; nodes tried: {tried}") from exc


async def _streamed(
    work: Callable[[Callable[[PipelineEvent], None]], Awaitable[None]],
) -> AsyncIterator[PipelineEvent]:
    """Run ``work(emit)`` as a task and yield what it emits, as it emits it.

    An exception in ``work`` is raised here after the events before it; if the consumer
    stops early (the client went away) the task is cancelled, and with it every node stream.
    """
    queue: asyncio.Queue[PipelineEvent | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await work(queue.put_nowait)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())
    try:
        finished = False
        while not finished:
            waiting = [await queue.get()]
            while not queue.empty():  # what came in while the last event was being sent
                waiting.append(queue.get_nowait())
            for event in merge_tokens(waiting):
                if event is None:
                    finished = True
                    break
                yield event
        await task  # re-raises the work's exception, if any
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def merge_tokens(events: list[PipelineEvent | None]) -> list[PipelineEvent | None]:
    """Consecutive token events of the same stream made one: the same text in the same order, fewer messages.

    Only events already waiting are merged, so a token is never held back for one that has not come.
    """
    merged: list[PipelineEvent | None] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, ChunkToken) and isinstance(last, ChunkToken) and (
                (event.chunk_id, event.node_id) == (last.chunk_id, last.node_id)):
            merged[-1] = ChunkToken(last.chunk_id, last.node_id, last.text + event.text, last.tokens + event.tokens)
        elif isinstance(event, AnswerToken) and isinstance(last, AnswerToken):
            merged[-1] = AnswerToken(last.text + event.text)
        else:
            merged.append(event)
    return merged


def _reward(
    deps: PipelineDeps,
    query_id: str,
    results: tuple[ChunkResult, ...],
    answers: dict[str, list[NodeAnswer]],
    prompts: dict[str, str],
    labels: dict[str | None, str],
) -> list[AppliedReward]:
    config = deps.config.reward
    applied: list[AppliedReward] = []
    for result in results:
        chunk_answers = answers[result.chunk.chunk_id]
        decisions = judge_chunk(result, chunk_answers, config, labels.get(result.chunk.chunk_id))
        for answer, decision in zip(chunk_answers, decisions, strict=True):  # one decision per answer, in order
            applied.append(apply_decision(
                deps.registry, deps.send_feedback, decision, result.chunk.operation.value, config,
                query_id=query_id, prompt=answer.prompt or prompts[decision.chunk_id], answer=answer.text))
    return applied


def apply_decision(
    registry: NodeRegistry, send_feedback: Callable[[str, NodeFeedback], None], decision: RewardDecision,
    operation: str, config: RewardConfig, *, query_id: str, prompt: str, answer: str,
) -> AppliedReward:
    """Stage 6 for one node answer: its fitness moved by ``decision`` (not for UNKNOWN), and the node told."""
    if decision.verdict is Verdict.UNKNOWN:
        before = after = registry.get(decision.node_id).fitness
    else:
        before, after = registry.apply_reward(
            decision.node_id, decision.reward, decision.verdict is Verdict.CORRECT,
            partial(update_fitness, reward=decision.reward, config=config), operation)
    send_feedback(decision.node_id, NodeFeedback(
        query_id=query_id, chunk_id=decision.chunk_id, prompt=prompt, answer=answer, verdict=decision.verdict,
        reward=decision.reward, correct_answer=decision.correct_answer, fitness=after, source=decision.source))
    return AppliedReward(decision, before, after)


def _query_record(
    query_id: str,
    query: str,
    answer: str,
    results: tuple[ChunkResult, ...],
    answers: dict[str, list[NodeAnswer]],
    prompts: dict[str, str],
) -> QueryRecord:
    chunks = []
    for result in results:
        winners = set(result.winning_node_ids)
        chunks.append({
            "chunk_id": result.chunk.chunk_id,
            "operation": result.chunk.operation.value,
            "text": result.chunk.text,
            "prompt": prompts[result.chunk.chunk_id],
            "answer": result.answer,
            "answers": [
                {"node_id": a.node_id, "text": a.text, "latency_ms": a.latency_ms, "failed": a.failed,
                 "in_winning_group": a.node_id in winners, "value": a.value, "sample": a.sample}
                for a in answers[result.chunk.chunk_id]
            ],
        })
    return QueryRecord(query_id, query, answer, time.time(), {"chunks": chunks})
