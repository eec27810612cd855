"""NodeService over gRPC, and the daemon's lifecycle (serve, join, drain on SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from dellm.node.backends.base import (
    BackendError,
    GenerationRequest,
    InferenceBackend,
    confidence_from_logprobs,
    stream_generation,
)
from dellm.node.config import NodeConfig
from dellm.node.state import (
    FeedbackEntry,
    FeedbackStore,
    NodeStateError,
    load_or_create_node_secret,
    new_node_secret,
    node_state_dir,
)
from dellm.protos import dellm_pb2, dellm_pb2_grpc, import_extra
from dellm.protos.security import SecurityConfig
from dellm.protos.transport import (
    add_health_and_reflection,
    bind,
    channel,
    new_server,
    normalized_ip,
    peer_host,
    set_serving,
    wait_for_signal,
)
from dellm.protos.wire import PROTOCOL_VERSION

if TYPE_CHECKING:
    from dellm.node.advertise import MdnsAdvertiser

log = logging.getLogger(__name__)
_CODE_ANSWER = re.compile(r"```|^\s*(?:answer|result)\s*=", re.M)  # an answer written as a program
_ASKS_FOR_CODE = re.compile(r"python code block|```python", re.I)  # the coordinator's program prompts
_BARE_RESULT = re.compile(r"^\s*(?:(?:answer|result)\s*=|answer:)?\s*[-$]?[\d.,_]+\s*%?\s*$", re.I)


def computes_nothing(answer: str) -> bool:
    """Whether an answer states its number without computing it: ``answer = 36`` or ``Answer: 36`` alone. As
    an example for a prompt that asks for a program, it would teach the model to do the arithmetic in its head
    and write the result, which is what the program is there to avoid."""
    lines = [line for line in answer.replace("```python", "").replace("```", "").splitlines() if line.strip()]
    return bool(lines) and all(_BARE_RESULT.match(line) for line in lines)
SERVICE_NAME = dellm_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
VERSION = "0.1.0"


def hardware_summary() -> str:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = 0.0
    return f"{os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} {platform.machine()}"


class JoinedCoordinator:
    """Whom a node takes Feedback from. Started with ``--coordinator``: only callers from the host of
    the coordinator it joined (nobody before the first Join succeeds); without: any caller.

    Without mutual TLS nothing stronger than the peer's address can be checked, so every process
    on the coordinator's host is trusted alike; the cluster token, when there is one, is required
    on top of it (by the server's TokenInterceptor).
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.hosts: frozenset[str] = frozenset()

    async def resolve(self) -> None:
        """Learn the coordinator's IP addresses (a name may have several); called after each Join."""
        if self.address is None:
            return
        host = self.address.rpartition(":")[0].strip("[]")
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve coordinator %s (%s); keeping %s", host, exc, sorted(self.hosts) or "none")
            return
        hosts = {normalized_ip(str(sockaddr[0])) for _, _, _, _, sockaddr in found}
        self.hosts = frozenset(h for h in hosts if h is not None)

    def refusal(self, peer: str) -> str | None:
        """None when ``peer`` (``context.peer()``) may send feedback, else why not."""
        if self.address is None:
            return None
        host = peer_host(peer)
        if host is not None and host in self.hosts:
            return None
        if not self.hosts:
            return (f"this node takes feedback only from the coordinator it joins ({self.address}), and has not "
                    f"joined it yet; refused {host or peer}")
        return (f"this node takes feedback only from the coordinator it joined ({self.address}, at "
                f"{', '.join(sorted(self.hosts))}); refused {host or peer}")


class NodeServicer(dellm_pb2_grpc.NodeServiceServicer):
    def __init__(self, backend: InferenceBackend, info: dellm_pb2.NodeInfo, feedback: FeedbackStore,
                 config: NodeConfig, joined: JoinedCoordinator | None = None) -> None:
        self._backend = backend
        self._info = info
        self._feedback = feedback
        self._config = config
        self._joined = joined or JoinedCoordinator(None)
        self._lock = asyncio.Lock()  # one generation at a time on this model context

    @property
    def info(self) -> dellm_pb2.NodeInfo:
        return self._info

    async def Generate(
        self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        if not request.prompt.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty")
        if len(request.prompt) > self._config.max_prompt_chars:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the prompt is {len(request.prompt)} characters; "
                                f"the maximum is {self._config.max_prompt_chars}")
        max_tokens = request.max_tokens if request.max_tokens > 0 else self._config.default_max_tokens
        generation = GenerationRequest(
            prompt=request.prompt,
            max_tokens=min(max_tokens, self._config.max_tokens_cap),
            temperature=max(0.0, request.temperature),
            stop=tuple(request.stop),
            system=request.system or None,
            examples=await self._few_shot_examples(request.prompt, request.chunk_id,
                                                    code_ok=request.operation == dellm_pb2.MATH_OP,
                                                    system=request.system),
            seed=request.seed,
        )
        logprobs: list[float] = []
        finish = "stop"
        try:
            async for piece in stream_generation(self._backend, generation, self._lock):
                logprobs.extend(piece.logprobs)
                if piece.finish_reason:
                    finish = piece.finish_reason
                if piece.text:
                    yield dellm_pb2.TokenChunk(text=piece.text, logprobs=piece.logprobs)
        except BackendError as exc:
            log.error("generation for chunk %s failed: %s", request.chunk_id, exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")
        yield dellm_pb2.TokenChunk(done=True, finish_reason=finish, confidence=confidence_from_logprobs(logprobs),
                                   completion_tokens=len(logprobs))

    async def _few_shot_examples(self, prompt: str, chunk_id: str, *, code_ok: bool = True, system: str = ""
                                 ) -> tuple[tuple[str, str], ...]:
        """The most similar verified examples from this node's feedback (SQLite, off the event loop).

        Math chunks are answered with code (the coordinator runs it); an example answered with code
        would teach a fact or text chunk to reply ``answer = ...``, so those get none (``code_ok``). A prompt
        that asks for a program, itself or in its ``system`` instruction, gets no example that only states a
        number (``computes_nothing``)."""
        if self._config.few_shot <= 0:
            return ()
        program = code_ok and bool(_ASKS_FOR_CODE.search(prompt) or _ASKS_FOR_CODE.search(system))
        wanted = 3 * self._config.few_shot if program or not code_ok else self._config.few_shot  # room to filter
        try:
            found = await asyncio.to_thread(self._feedback.verified_examples, prompt, wanted)
        except sqlite3.Error as exc:
            log.warning("chunk %s: few-shot lookup failed, answering without examples: %s", chunk_id, exc)
            return ()
        if not code_ok:
            found = [e for e in found if not _CODE_ANSWER.search(e.answer)]
        elif program:
            found = [e for e in found if not computes_nothing(e.answer)]
        found = found[: self._config.few_shot]
        examples = fit_examples([(e.prompt, e.answer) for e in found], self._config.few_shot_max_chars)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("chunk %s: %d few-shot examples (similarity %s)", chunk_id, len(examples),
                      ", ".join(f"{e.similarity:.2f}" for e in found[: len(examples)]) or "-")
        return examples

    async def Feedback(
        self, request: dellm_pb2.NodeFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.NodeFeedbackReply:
        return await self._store_feedback([request], context)

    async def FeedbackBatch(
        self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.NodeFeedbackReply:
        return await self._store_feedback(list(request.items), context)

    async def _store_feedback(
        self, items: list[dellm_pb2.NodeFeedbackRequest], context: grpc.aio.ServicerContext
    ) -> dellm_pb2.NodeFeedbackReply:
        refused = self._joined.refusal(context.peer())
        if refused is not None:
            log.warning("feedback for %s refused: %s", ", ".join(f"{r.query_id}/{r.chunk_id}" for r in items), refused)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        received = time.time()
        entries = [
            FeedbackEntry(
                query_id=r.query_id, chunk_id=r.chunk_id, prompt=r.prompt, answer=r.answer,
                verdict={dellm_pb2.CORRECT: "CORRECT", dellm_pb2.WRONG: "WRONG"}.get(r.verdict, "UNKNOWN"),
                reward=r.reward, correct_answer=r.correct_answer, fitness=r.fitness, source=r.source,
                received_at=received,
            )
            for r in items
        ]
        stored = await asyncio.to_thread(self._feedback.add_many, entries)  # off the event loop, even when empty
        if entries:  # one line per call: a busy node gets feedback for many answers a second
            verdicts = Counter(e.verdict for e in entries)
            log.info("feedback for %s%s: %s; fitness %.3f", f"{entries[-1].query_id}/{entries[-1].chunk_id}",
                     f" and {len(entries) - 1} more" if len(entries) > 1 else "",
                     ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())), entries[-1].fitness)
        return dellm_pb2.NodeFeedbackReply(stored=stored)

    async def Info(
        self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.NodeInfo:
        return self._info


def fit_examples(examples: list[tuple[str, str]], max_chars: int) -> tuple[tuple[str, str], ...]:
    """The leading examples (best first) whose prompts and answers fit in ``max_chars`` together."""
    kept: list[tuple[str, str]] = []
    used = 0
    for prompt, answer in examples:
        used += len(prompt) + len(answer)
        if used > max_chars:
            break
        kept.append((prompt, answer))
    return tuple(kept)


@dataclass
class RunningNode:
    server: grpc.aio.Server
    address: str
    servicer: NodeServicer
    joiner: asyncio.Task[None] | None = None
    advertiser: MdnsAdvertiser | None = None  # dellm[lan]: zeroconf
    security: SecurityConfig = field(default_factory=SecurityConfig)
    node_secret: str = field(default="", repr=False)  # proves the node id to coordinators (Join, Leave)

    async def stop(self, grace: float, coordinator: str | None = None, join_timeout: float = 5.0) -> None:
        if self.advertiser is not None:
            await self.advertiser.stop()  # goodbye first: coordinators stop routing here at once
        if self.joiner is not None:
            self.joiner.cancel()
            await asyncio.gather(self.joiner, return_exceptions=True)
        if coordinator:
            await leave_coordinator(coordinator, self.servicer.info.node_id, join_timeout, self.security,
                                    self.node_secret, self.servicer.info.address)
        await self.server.stop(grace)


async def join_coordinator(coordinator: str, info: dellm_pb2.NodeInfo, timeout: float,
                           security: SecurityConfig | None = None, node_secret: str = "") -> float:
    """One Join call, presenting ``node_secret`` (the coordinator binds the id to it at the first Join);
    returns the fitness the coordinator holds for this node."""
    async with channel(coordinator, security) as joined:
        reply = await dellm_pb2_grpc.CoordinatorServiceStub(joined).Join(
            dellm_pb2.JoinRequest(info=info, node_secret=node_secret), timeout=timeout)
    return reply.fitness


async def leave_coordinator(coordinator: str, node_id: str, timeout: float,
                            security: SecurityConfig | None = None, secret: str = "", address: str = "") -> None:
    """Say goodbye with the node's secret (only the id's owner may leave); ``address`` (this node's) lets the
    coordinator ignore the Leave of a duplicate."""
    try:
        async with channel(coordinator, security) as joined:
            await dellm_pb2_grpc.CoordinatorServiceStub(joined).Leave(
                dellm_pb2.LeaveRequest(node_id=node_id, node_secret=secret, address=address), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        log.warning("could not leave coordinator %s: %s", coordinator, exc.details())


async def keep_joined(coordinator: str, info: dellm_pb2.NodeInfo, config: NodeConfig,
                      joined: asyncio.Event | None = None, trusted: JoinedCoordinator | None = None,
                      node_secret: str = "") -> None:
    """Join, retrying with backoff, then re-join every ``rejoin_interval_s`` as a heartbeat.
    After each Join, ``trusted`` learns the coordinator's addresses (Feedback is taken only from them)."""
    delay = 0.5
    was_joined = False
    while True:
        try:
            fitness = await join_coordinator(coordinator, info, config.join_timeout_s, config.security,
                                             node_secret)
        except grpc.aio.AioRpcError as exc:
            if "already live" in (exc.details() or "") and (was_joined or delay == 0.5):
                log.error("coordinator %s refuses this node: %s. Another node runs with the same id (the same "
                          "--name and state folder, or a copy of it): give this one its own --name (retrying)",
                          coordinator, exc.details())
            elif was_joined or delay == 0.5:
                log.warning("cannot join coordinator %s: %s: %s (retrying)", coordinator, exc.code().name,
                            exc.details())
            was_joined = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.rejoin_interval_s)
            continue
        if trusted is not None:
            await trusted.resolve()
        if not was_joined:
            log.info("joined coordinator %s as %s (fitness %.3f)", coordinator, info.node_id, fitness)
            if joined is not None:
                joined.set()
        was_joined, delay = True, 0.5
        await asyncio.sleep(config.rejoin_interval_s)


def advertised_address(bound: str) -> str:
    host, _, port = bound.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    return f"{host}:{port}"


async def start_node(backend: InferenceBackend, info: dellm_pb2.NodeInfo, feedback: FeedbackStore,
                     config: NodeConfig) -> RunningNode:
    node_secret = _node_secret(config)  # NodeStateError for a damaged file, before serving anything
    server = new_server(config.security)
    bound = bind(server, config.listen, config.security)
    full_info = dellm_pb2.NodeInfo()
    full_info.CopyFrom(info)
    full_info.address = advertised_address(bound)
    full_info.token_required = config.security.token_required
    joined = JoinedCoordinator(config.coordinator or None)
    servicer = NodeServicer(backend, full_info, feedback, config, joined)
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    await server.start()
    await set_serving(health_servicer, [SERVICE_NAME], True)
    log.info("node %s serving on %s (%s)", full_info.node_id, full_info.address, config.security.describe())
    running = RunningNode(server, full_info.address, servicer, security=config.security, node_secret=node_secret)
    if config.coordinator:
        running.joiner = asyncio.create_task(keep_joined(config.coordinator, full_info, config, trusted=joined,
                                                         node_secret=node_secret))
    if config.advertise:
        import_extra("zeroconf", "lan", "advertising over mDNS (on by default; --no-advertise turns it off)")
        from dellm.node.advertise import MdnsAdvertiser

        running.advertiser = MdnsAdvertiser(full_info, config.interface)
        await running.advertiser.start()
    return running


def _node_secret(config: NodeConfig) -> str:
    """The node's secret from its state folder; a node without a (valid) name has no folder: one for this run."""
    try:
        folder = node_state_dir(config.state_dir, config.name)
    except NodeStateError:
        return new_node_secret()
    return load_or_create_node_secret(folder)


async def serve_node(backend: InferenceBackend, info: dellm_pb2.NodeInfo, feedback: FeedbackStore,
                     config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    running = await start_node(backend, info, feedback, config)
    print(f"dellm-node {info.node_id} serving {info.model} ({info.backend}) on {running.address}", flush=True)
    try:
        await wait_for_signal(stop)
        log.info("shutting down; draining in-flight streams for up to %.1fs", config.drain_grace_s)
    finally:
        await running.stop(config.drain_grace_s, config.coordinator, config.join_timeout_s)
        with contextlib.suppress(Exception):
            backend.close()


def node_info(node_id: str, name: str, backend: InferenceBackend, model_sha256: str = "",
              cluster: str = "default") -> dellm_pb2.NodeInfo:
    described = backend.describe()
    return dellm_pb2.NodeInfo(
        node_id=node_id, name=name, model=described.model, backend=described.backend,
        quantization=described.quantization, context_size=described.context_size, hardware=hardware_summary(),
        version=VERSION, model_sha256=model_sha256, protocol_version=PROTOCOL_VERSION, cluster=cluster,
    )


__all__ = ["NodeServicer", "RunningNode", "node_info", "serve_node", "start_node"]
