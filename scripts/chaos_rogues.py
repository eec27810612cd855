"""The rogue scenario of scripts/chaos.py: hostile contributors beside the honest nodes, over real gRPC.

Run in a thread of the chaos process, with its own event loop, against the coordinator process:

  bomb       a node that answers canaries right and everything else wrong, with logprob +1000
  slowloris  a node that answers canaries right and everything else one byte a second
  replayer   a node that answers like the honest ones, keeps the query ids it is sent and gives "correct"
             feedback on them, again and again (to raise its fitness and win later votes)
  hijacker   Leave(an honest node's id), then Join(that id, its own address), again and again
  flood      Join of ``flood`` fake node ids from one address, each answering everything wrong

Each rogue counts what the coordinator answered it (``report()``); chaos.py checks the rest: no query
lost, and no rogue's answer won a vote.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from dellm.node.daemon import SERVICE_NAME, join_coordinator
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, channel, new_server, set_serving
from dellm.protos.wire import PROTOCOL_VERSION

WRONG = "Bananas grow on trees, and the answer is 7."
HONEST = "Paris is the capital of France and a fine city."  # what chaos.py's honest nodes answer
_CANARY = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")


def canary_answer(prompt: str) -> str | None:
    """The right answer to a canary question in ``prompt`` (a smart rogue passes probation), else None."""
    found = _CANARY.search(prompt)
    if found is None:
        return None
    a, op, b = int(found.group(1)), found.group(2), int(found.group(3))
    return str({"+": a + b, "-": a - b, "*": a * b}[op])


Answer = Callable[[dellm_pb2.GenerateRequest], AsyncIterator[dellm_pb2.TokenChunk]]


async def bomb(request: dellm_pb2.GenerateRequest) -> AsyncIterator[dellm_pb2.TokenChunk]:
    for word in WRONG.split(" "):
        yield dellm_pb2.TokenChunk(text=word + " ", logprobs=[1000.0])
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=1e30)


async def slowloris(request: dellm_pb2.GenerateRequest) -> AsyncIterator[dellm_pb2.TokenChunk]:
    for byte in WRONG:
        yield dellm_pb2.TokenChunk(text=byte, logprobs=[-0.01])
        await asyncio.sleep(1.0)
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)


async def like_the_honest(request: dellm_pb2.GenerateRequest) -> AsyncIterator[dellm_pb2.TokenChunk]:
    yield dellm_pb2.TokenChunk(text=HONEST, logprobs=[-0.01])
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)


async def plain_wrong(request: dellm_pb2.GenerateRequest) -> AsyncIterator[dellm_pb2.TokenChunk]:
    yield dellm_pb2.TokenChunk(text=WRONG, logprobs=[-0.01])
    yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)


class RogueNode(dellm_pb2_grpc.NodeServiceServicer):
    """A hostile node: canaries answered right (``smart``), everything else as ``answer`` says."""

    def __init__(self, node_id: str, answer: Answer, smart: bool = True) -> None:
        self.info = dellm_pb2.NodeInfo(node_id=node_id, name=node_id, model="rogue", backend="scripted",
                                       protocol_version=PROTOCOL_VERSION, cluster="default")
        self.answer, self.smart = answer, smart
        self.secret = secrets.token_urlsafe(32)
        self.query_ids: list[str] = []

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info

    async def Generate(self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        self.query_ids.append(request.query_id)
        right = canary_answer(request.prompt) if self.smart else None
        if right is not None:
            yield dellm_pb2.TokenChunk(text=f"The answer is {right}.", logprobs=[-0.01] * 4)
            yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.99)
            return
        async for message in self.answer(request):
            yield message

    async def FeedbackBatch(self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
                            ) -> dellm_pb2.NodeFeedbackReply:
        return dellm_pb2.NodeFeedbackReply(stored=len(request.items))


async def serve(rogue: RogueNode) -> grpc.aio.Server:
    server = new_server()
    rogue.info.address = bind(server, "127.0.0.1:0")
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(rogue, server)
    await set_serving(add_health_and_reflection(server, [SERVICE_NAME]), [SERVICE_NAME], True)
    await server.start()
    return server


class Rogues:
    """Every rogue, in a thread with its own event loop, until ``stop()``."""

    def __init__(self, coordinator: str, flood: int = 100, honest_prefix: str = "node-") -> None:
        self.coordinator, self.flood, self.honest_prefix = coordinator, flood, honest_prefix
        self.counts: Counter[str] = Counter()
        self.ids = {"rogue-bomb", "rogue-slowloris", "rogue-replayer"}
        self.victims: dict[str, str] = {}  # honest node id -> its address when first seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="rogues")
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self._error is not None:
            raise RuntimeError(f"the rogues failed: {self._error!r}") from self._error

    def _count(self, what: str, code: grpc.StatusCode | None) -> None:
        self.counts[f"{what} {'OK' if code is None else code.name}"] += 1

    async def _main(self) -> None:
        try:
            await self._run()
        except BaseException as exc:
            self._error = exc
            raise

    async def _run(self) -> None:
        rogues = [RogueNode("rogue-bomb", bomb), RogueNode("rogue-slowloris", slowloris),
                  RogueNode("rogue-replayer", like_the_honest)]
        servers = [await serve(rogue) for rogue in rogues]
        for rogue in rogues:
            await self._call("join", join_coordinator(self.coordinator, rogue.info, 5.0, node_secret=rogue.secret))
        floods = [RogueNode(f"flood-{i:04d}", plain_wrong, smart=False) for i in range(self.flood)]
        self.ids |= {f.info.node_id for f in floods}
        servers += [await serve(f) for f in floods]
        for fake in floods:
            await self._call("flood join", join_coordinator(self.coordinator, fake.info, 5.0, node_secret=fake.secret))
        try:
            async with channel(self.coordinator) as ch:
                stub = dellm_pb2_grpc.CoordinatorServiceStub(ch)
                while not self._stop.is_set():
                    await self._hijack(stub)
                    await self._replay(stub, rogues[2])
                    await asyncio.sleep(0.3)
        finally:
            for server in servers:
                await server.stop(None)

    async def _call(self, what: str, call: Any) -> Any:
        try:
            result = await call
        except grpc.aio.AioRpcError as exc:
            self._count(what, exc.code())
            return None
        self._count(what, None)
        return result

    async def _hijack(self, stub: dellm_pb2_grpc.CoordinatorServiceStub) -> None:
        listed = await self._call("list", stub.ListNodes(dellm_pb2.ListNodesRequest(), timeout=5))
        honest = [n.info for n in (listed.nodes if listed else []) if n.info.name.startswith(self.honest_prefix)]
        if not honest:
            return
        victim = honest[self.counts["hijack rounds"] % len(honest)]
        self.counts["hijack rounds"] += 1
        self.victims.setdefault(victim.node_id, victim.address)
        impostor = RogueNode(victim.node_id, plain_wrong, smart=False)
        impostor.info.CopyFrom(victim)
        server = await serve(impostor)
        try:
            await self._call("hijack leave", stub.Leave(dellm_pb2.LeaveRequest(node_id=victim.node_id), timeout=5))
            await self._call("hijack join", stub.Join(dellm_pb2.JoinRequest(
                info=impostor.info, node_secret=secrets.token_urlsafe(32)), timeout=5))
        finally:
            await server.stop(None)

    async def _replay(self, stub: dellm_pb2_grpc.CoordinatorServiceStub, replayer: RogueNode) -> None:
        for query_id in replayer.query_ids[-5:]:
            await self._call("replayed feedback", stub.Feedback(
                dellm_pb2.FeedbackRequest(query_id=query_id, correct=True), timeout=5))

    def report(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "victims": self.victims}
