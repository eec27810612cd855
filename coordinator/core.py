"""The coordinator's state and operations, independent of gRPC.

``Coordinator`` owns the registry, the node connections and the synthesizer; the gRPC
servicer in ``coordinator.server`` only translates messages to and from these calls.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from functools import partial

from dellm.coordinator.admission import JoinLimiter
from dellm.coordinator.canary import CanaryProbe
from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.discovery.base import Discovery
from dellm.coordinator.errors import (
    AdmissionRejectedError,
    NodeCallError,
    NoNodesAvailableError,
    NotOwnerError,
    TooManyQueriesError,
    UnknownNodeError,
    shown,
)
from dellm.coordinator.health import HealthMonitor
from dellm.coordinator.identity import check_secret, proves, secret_digest
from dellm.coordinator.node_client import FeedbackSender, NodePool
from dellm.coordinator.pipeline.answer import PipelineDeps, answer_query
from dellm.coordinator.pipeline.decompose import check_query as check_query_text
from dellm.coordinator.pipeline.planner import ModelPlanner
from dellm.coordinator.pipeline.reward import reward_for, update_fitness
from dellm.coordinator.pipeline.route import OperationLatencies, Shortlist
from dellm.coordinator.pipeline.stall import is_stalled
from dellm.coordinator.pipeline.synthesize import Synthesizer
from dellm.coordinator.probation import Probation
from dellm.coordinator.registry.base import NodeRegistry
from dellm.coordinator.sandbox import ProgramRunner, SubprocessSandbox
from dellm.coordinator.types import (
    AppliedReward,
    ChunkRequest,
    NodeFeedback,
    NodeRecord,
    PipelineEvent,
    QueryFinished,
    RewardDecision,
    StreamPiece,
    Verdict,
)
from dellm.coordinator.user_verdicts import check_feedback, recorded, replacing, winning_answers, with_feedback_token
from dellm.coordinator.warmup import warm_node, warm_system_prompts
from dellm.protos.security import SecurityConfig
from dellm.protos.wire import SUPPORTED_PROTOCOL_VERSIONS, FeedbackSource, NodeDescription, NodeState, is_node_id

log = logging.getLogger(__name__)

MAX_ADDRESS_CHARS = 270  # host (a DNS name is at most 253) and port

START_NODE_HINT = (
    "start one with `dellm-node --model qwen2.5-coder-0.5b-instruct --coordinator HOST:PORT` "
    "(after `dellm models pull qwen2.5-coder-0.5b-instruct`)"
)






class QueryLimiter:
    """Counts queries in flight, in total and per client; refuses past the limits, never queues."""

    def __init__(self, total: int, per_client: int) -> None:
        self._total, self._per_client = total, per_client
        self._by_client: dict[str, int] = {}

    def acquire(self, client: str) -> None:
        if sum(self._by_client.values()) >= self._total:
            raise TooManyQueriesError(f"the coordinator is answering {self._total} queries already; retry shortly")
        if self._by_client.get(client, 0) >= self._per_client:
            raise TooManyQueriesError(f"{client or 'this client'} has {self._per_client} queries in flight already; "
                                      "wait for one to finish")
        self._by_client[client] = self._by_client.get(client, 0) + 1

    def release(self, client: str) -> None:
        self._by_client[client] -= 1
        if not self._by_client[client]:
            del self._by_client[client]


class GrpcNodeConnector:
    """The real NodeConnector: streams over the pool's gRPC channels."""

    def __init__(self, pool: NodePool) -> None:
        self._pool = pool

    def stream(self, node: NodeRecord, request: ChunkRequest, timeout: float) -> AsyncIterator[StreamPiece]:
        return self._pool.client(node.node_id, node.info.address).generate(request, timeout)


class Coordinator:
    """Owns the registry, node connections, synthesizer, discovery and health monitor.

    Nodes come in three ways, all through :meth:`admit`: the Join RPC, mDNS discovery and a
    static list. Long-lived work (discovery, health checks, feedback delivery) starts with
    :meth:`start` and ends with :meth:`close`.
    """

    def __init__(self, config: CoordinatorConfig, registry: NodeRegistry, synthesizer: Synthesizer,
                 discovery: Sequence[Discovery] = (), planner: ModelPlanner | None = None,
                 security: SecurityConfig | None = None, runner: ProgramRunner | None = None) -> None:
        self.config = config
        # Math answers' programs run here; the default is the real sandbox, or none with programs off.
        self.runner = runner if runner is not None else (
            SubprocessSandbox() if config.program_aided else None)
        self.registry = registry
        self.synthesizer = synthesizer
        self.security = security or SecurityConfig()  # this server's token and TLS, and its calls to nodes
        self.pool = NodePool(self.security)
        self._feedback = FeedbackSender(self.pool, config.feedback_linger_s, config.feedback_timeout_s)
        self._discovery = tuple(discovery)
        self._health = HealthMonitor(registry, self.pool, config.health, config.admission.retention_s)
        self._joins = JoinLimiter(config.admission)
        self._refusals: dict[str, str] = {}
        self._rng = random.Random(config.route.seed)
        self._shortlist = Shortlist(config.route)
        self._latencies = OperationLatencies()  # each node's time at each operation (routing; in memory)
        self._planner = planner
        self._limiter = QueryLimiter(config.max_queries, config.max_queries_per_client)
        self.canaries = CanaryProbe(config, registry, GrpcNodeConnector(self.pool), self._send_feedback,
                                    random.Random(config.route.seed + 1), self.runner)
        self.probation = Probation(config.admission, registry, self.canaries)

    async def start(self) -> None:
        self._health.start()
        self.canaries.start()
        self.probation.start()
        for discovery in self._discovery:
            await discovery.start(self)

    # --- membership -------------------------------------------------------------------

    async def admit(self, address: str, expected: NodeDescription | None = None, *,
                    owner_proven: bool = False) -> NodeRecord:
        """Check the node at ``address`` over gRPC and register it.

        ``expected`` is what the node claimed (its Join request or mDNS advertisement); the
        node's own Info must agree with it. ``owner_proven``: the caller presented the id's node
        secret (only Join can). Raises AdmissionRejectedError saying why not, or NotOwnerError.
        """
        probe = self.pool.probe(expected.node_id if expected else "?", address)
        try:
            actual = await probe.info_once(self.config.rpc_timeout_s)
        except NodeCallError as exc:
            raise AdmissionRejectedError(f"{address} did not answer Info: {exc.details or exc.code}") from exc
        if actual.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise AdmissionRejectedError(f"node {actual.node_id} at {address} speaks protocol "
                                         f"{actual.protocol_version}; supported: {sorted(SUPPORTED_PROTOCOL_VERSIONS)}")
        if actual.cluster != self.config.cluster:
            raise AdmissionRejectedError(f"node {actual.node_id} at {address} is in cluster {actual.cluster!r}, "
                                         f"not {self.config.cluster!r}")
        if expected is not None:
            mismatch = [f"{field} {getattr(expected, field)!r} != {getattr(actual, field)!r}"
                        for field in ("node_id", "model", "backend")
                        if getattr(expected, field) and getattr(expected, field) != getattr(actual, field)]
            if mismatch:
                raise AdmissionRejectedError(f"{address} does not match what it claimed: {'; '.join(mismatch)}")
        try:
            known: NodeRecord | None = self.registry.get(actual.node_id)
        except UnknownNodeError:
            known = None
        await self._refuse_duplicate(known, actual.node_id, address, owner_proven=owner_proven)
        budget = self.config.admission.warm_budget_s
        if budget > 0 and (known is None or known.state != NodeState.UP):  # before it can get work
            warmed = await warm_node(self.pool.client(actual.node_id, address),
                                     warm_system_prompts(self.config.dispatch), budget)
            log.debug("node %s warmed on %d system prompts", actual.node_id, warmed)
        record = self.registry.upsert_node(replace(actual, address=address), now=time.time())
        if (known is None or known.state != NodeState.UP) and self.probation.needs(record):
            self.probation.admit(record.node_id)  # (a probation node rejoining stays on it)
        await self.pool.client(record.node_id, address).connect(self.config.rpc_timeout_s)
        if known is None or known.state != NodeState.UP or known.info.address != address:
            log.info("node %s admitted from %s (%s, %s), fitness %.3f", record.node_id, address, record.info.model,
                     record.info.backend, record.fitness)
        return record

    async def _refuse_duplicate(self, known: NodeRecord | None, node_id: str, address: str, *,
                                owner_proven: bool) -> None:
        """A node id known at another address that still answers as that id there is a duplicate, whatever
        the registry says of its state (a node marked down, or told to leave by someone else, may be alive):
        an id moves to a new address only once its old address is dead. An id bound to a secret may move
        only with the secret's proof (checked by ``join`` before this), so discovery cannot move it."""
        if known is None or known.info.address == address:
            return
        await self._refuse_live_duplicate(known, address)
        if not owner_proven and self.registry.node_credential(node_id) is not None:
            raise NotOwnerError(f"node id {node_id} is bound to the node last at {known.info.address}; only that "
                                f"node (with its node secret, over Join) can move it to {address}")

    async def _refuse_live_duplicate(self, known: NodeRecord, address: str) -> None:
        """AdmissionRejectedError when ``known``'s address still answers Info as its id."""
        node_id = known.node_id
        try:
            other = await self.pool.probe(node_id, known.info.address).info_once(self.config.rpc_timeout_s)
        except NodeCallError:
            return  # the old address is dead: this is the same node, moved
        if other.node_id == node_id:
            raise AdmissionRejectedError(f"node id {node_id} is already live at {known.info.address}; "
                                         f"refusing the duplicate at {address}")

    async def join(self, claimed: NodeDescription, secret: str = "", peer: str = "") -> NodeRecord:
        """The Join RPC: a node names itself and its address, and proves it owns its id with its node
        secret (coordinator/identity.py): an unbound id is bound to the secret presented, a bound one
        requires it (NotOwnerError). A node without a secret (older versions) stays unbound. ``peer``
        (the caller's host) is what the Join limits count by (coordinator/admission.py).
        """
        node_id = claimed.node_id
        if not node_id or not claimed.address:
            raise AdmissionRejectedError("a joining node must give its node_id and address")
        if not is_node_id(node_id) or len(claimed.address) > MAX_ADDRESS_CHARS:
            raise AdmissionRejectedError(f"malformed node_id {shown(node_id)} or address {shown(claimed.address)}: "
                                         "an id is 1-64 letters, digits, '-' or '_'")
        self._joins.join(peer)
        check_secret(secret)
        try:
            self.registry.get(node_id)
        except UnknownNodeError:
            self._joins.new_id(peer, sum(1 for n in self.registry.list_nodes() if n.state != NodeState.GONE))
        digest = self.registry.node_credential(node_id)
        if digest is not None and not proves(secret, digest):
            raise NotOwnerError(f"node id {node_id} belongs to the node that first joined with it: a Join must "
                                "present the node secret issued to it then")
        record = await self.admit(claimed.address, claimed, owner_proven=digest is not None)
        if digest is not None or not secret:
            return record
        if self.registry.node_credential(node_id) is not None:  # another Join for the id won the race meanwhile
            raise NotOwnerError(f"node id {node_id} was just claimed by another Join; this one is refused")
        self.registry.bind_credential(node_id, secret_digest(secret))
        log.info("node %s bound to its node secret", node_id)
        return record

    async def found(self, address: str, advert: NodeDescription | None, *, source: str) -> None:
        """DiscoverySink: admit what discovery found; log a refusal once per address and reason."""
        try:
            await self.admit(address, advert)
        except (AdmissionRejectedError, NotOwnerError) as exc:
            if self._refusals.get(address) != str(exc):
                self._refusals[address] = str(exc)
                log.warning("%s: not admitting %s: %s", source, address, exc)
        else:
            self._refusals.pop(address, None)

    async def lost(self, node_id: str, *, source: str) -> None:
        """DiscoverySink: the node said goodbye; stop routing to it now (health checks may revive it)."""
        with contextlib.suppress(UnknownNodeError):
            self.registry.set_state(node_id, NodeState.DOWN)
            log.info("%s: node %s said goodbye: down", source, node_id)

    def leave(self, node_id: str, secret: str = "", address: str = "") -> bool:
        """The Leave RPC: only the id's owner (its node secret) may take it out of the routing. A Leave from
        another address than the node's (a duplicate of it going away) changes nothing; returns whether the
        node was marked down."""
        known = self.registry.get(node_id)  # UnknownNodeError -> NOT_FOUND
        if address and known.info.address != address:
            log.warning("ignoring Leave for node %s from %s: it is live at %s (a duplicate leaving?)", node_id,
                        address, known.info.address)
            return False
        digest = self.registry.node_credential(node_id)
        if digest is None or not proves(secret, digest):
            raise NotOwnerError(f"only node {node_id} itself (with its node secret) may leave")
        self.registry.set_state(node_id, NodeState.DOWN, now=time.time())
        log.info("node %s left", node_id)
        return True

    def nodes(self) -> list[tuple[NodeRecord, int]]:
        return [(n, self.pool.in_flight.get(n.node_id, 0)) for n in self.registry.list_nodes()]

    # --- queries ----------------------------------------------------------------------

    def check_query(self, query: str) -> None:
        """Fail fast, before any stream starts: InvalidQueryError or NoNodesAvailableError."""
        check_query_text(query, self.config.decompose)
        if not len(self.registry.table()):
            raise NoNodesAvailableError(f"no nodes are available; {START_NODE_HINT}")

    async def ask(self, query: str, reference_answer: str = "", client: str = "") -> AsyncIterator[PipelineEvent]:
        """Answer ``query`` for ``client`` (its address: the per-client limit counts by it);
        ``reference_answer`` is ground truth only with ``accept_labels`` (benchmarks)."""
        self.check_query(query)
        self._limiter.acquire(client)
        try:
            deps = PipelineDeps(self.config, self.registry, GrpcNodeConnector(self.pool), self.pool.in_flight,
                                self.synthesizer, self._send_feedback, self._rng, shortlist=self._shortlist,
                                planner=self._planner, runner=self.runner, latencies=self._latencies)
            label = reference_answer.strip() if self.config.accept_labels else ""
            async for event in answer_query(query, deps, label or None):
                if isinstance(event, QueryFinished):  # only the asker gets the token to judge the query with
                    record, token = with_feedback_token(self.registry.get_query(event.query_id))
                    self.registry.save_query(record)
                    event = replace(event, feedback_token=token, rewards=event.rewards + self._stall_penalties(event))
                yield event
        finally:
            self._limiter.release(client)

    async def feedback(self, query_id: str, correct: bool, answer: str = "", token: str = "") -> list[AppliedReward]:
        """A user's verdict on a whole query, applied to the nodes whose answers it used: only from the
        asker (``token``), and once per (chunk, node): a repeat changes nothing, the other verdict replaces
        the first (coordinator/user_verdicts.py). No await inside: one verdict is applied at a time."""
        record = self.registry.get_query(query_id)  # UnknownQueryError -> NOT_FOUND
        check_feedback(record, token, answer)  # NotOwnerError -> PERMISSION_DENIED
        verdict = Verdict.CORRECT if correct else Verdict.WRONG
        config = self.config.reward
        applied: list[AppliedReward] = []
        given: dict[str, tuple[Verdict, float]] = {}
        for judged in winning_answers(record):
            if judged.previous is verdict:  # said before: nothing changes
                fitness = self.registry.get(judged.node_id).fitness
                applied.append(AppliedReward(RewardDecision(judged.node_id, judged.chunk_id, verdict, 0.0,
                                                            FeedbackSource.USER), fitness, fitness))
                continue
            reward = reward_for(verdict, judged.latency_ms, config, verified=True)
            decision = RewardDecision(judged.node_id, judged.chunk_id, verdict, reward, FeedbackSource.USER,
                                      answer or (record.answer if correct else ""))
            before, after = self.registry.apply_reward(judged.node_id, reward, correct,
                                                       replacing(judged.previous_delta, reward, config),
                                                       judged.operation)
            given[judged.key] = (verdict, after - min(1.0, max(0.0, before - judged.previous_delta)))
            self._send_feedback(judged.node_id, NodeFeedback(
                query_id=query_id, chunk_id=judged.chunk_id, prompt=judged.prompt, answer=judged.text,
                verdict=verdict, reward=reward, correct_answer=decision.correct_answer, fitness=after,
                source=FeedbackSource.USER))
            applied.append(AppliedReward(decision, before, after))
        if given:
            self.registry.save_query(recorded(record, given))
        return applied

    def _stall_penalties(self, finished: QueryFinished) -> tuple[AppliedReward, ...]:
        """A node whose stream stalled (pipeline/stall.py) was rewarded as wrong; it gets
        ``stall.extra_penalties`` wrong-answer updates more: stalling costs more than answering wrong."""
        config = self.config.reward
        update = partial(update_fitness, reward=config.wrong_reward, config=config)
        applied = []
        for result in finished.results:
            for vote in result.votes:
                if not is_stalled(vote.error):
                    continue
                for _ in range(self.config.dispatch.stall.extra_penalties):
                    before, after = self.registry.apply_reward(vote.node_id, config.wrong_reward, False, update,
                                                               result.chunk.operation.value)
                    applied.append(AppliedReward(RewardDecision(vote.node_id, result.chunk.chunk_id, Verdict.WRONG,
                                                                config.wrong_reward, FeedbackSource.FAILURE),
                                                 before, after))
        return tuple(applied)

    def _send_feedback(self, node_id: str, feedback: NodeFeedback) -> None:
        """Deliver feedback to a node in the background; a failure is logged, never raised."""
        try:
            node = self.registry.get(node_id)
        except KeyError:
            return
        self._feedback.send(node_id, node.info.address, feedback)

    async def close(self) -> None:
        for discovery in self._discovery:
            await discovery.stop()
        await self._health.stop()
        await self.probation.stop()
        await self.canaries.stop()
        await self._feedback.close()
        await self.pool.close()
        self.registry.close()
