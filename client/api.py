"""A small async client for the coordinator. gRPC errors come out as ``client.errors``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc

from dellm.client.errors import from_rpc_error
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.security import SecurityConfig
from dellm.protos.transport import channel, with_default_port

DEFAULT_COORDINATOR = "127.0.0.1:50050"


def default_coordinator() -> str:
    return os.environ.get("DELLM_COORDINATOR", DEFAULT_COORDINATOR)


@dataclass(frozen=True)
class ClientConfig:
    ask_timeout_s: float = 300.0  # a whole query, all stages, on slow CPU-only nodes
    unary_timeout_s: float = 10.0  # ListNodes, Feedback
    wait_for_ready: bool = False  # fail fast when no coordinator is there
    security: SecurityConfig = field(default_factory=SecurityConfig)  # cluster token and TLS towards the coordinator


class DellmClient:
    """``async with DellmClient("127.0.0.1:50050") as client: async for event in client.ask(q): ...``"""

    def __init__(self, address: str | None = None, config: ClientConfig | None = None) -> None:
        self.address = with_default_port(address or default_coordinator())  # "localhost" -> "localhost:50050"
        self.config = config or ClientConfig()
        self._channel = channel(self.address, self.config.security)
        self._stub = dellm_pb2_grpc.CoordinatorServiceStub(self._channel)

    async def __aenter__(self) -> DellmClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def ask(self, query: str, reference_answer: str = "") -> AsyncIterator[dellm_pb2.AskEvent]:
        """Stream the events of one query. ``reference_answer`` is the known right final answer
        (benchmark mode): a coordinator started with ``--accept-labels`` rewards nodes by it."""
        request = dellm_pb2.AskRequest(query=query, reference_answer=reference_answer)
        call = self._stub.Ask(request, timeout=self.config.ask_timeout_s,
                              wait_for_ready=self.config.wait_for_ready)
        async for event in self._relay(call):
            yield event

    async def watch(self, replay: bool = True) -> AsyncIterator[dellm_pb2.QuerySummary]:
        """Every query the coordinator finishes, from any client, as it finishes; with ``replay``, first the
        recent ones it keeps. Runs until the caller stops (no deadline); UnsupportedError from an older
        coordinator."""
        async for summary in self._relay(self._stub.Watch(dellm_pb2.WatchRequest(replay=replay))):
            yield summary

    async def _relay(self, call: Any) -> AsyncIterator[Any]:
        """A server stream's messages, its RPC errors translated; leaving early cancels the call (for Ask:
        the query and the node streams it started)."""
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.address) from exc
        finally:
            call.cancel()

    async def nodes(self) -> list[dellm_pb2.NodeStatus]:
        try:
            reply = await self._stub.ListNodes(dellm_pb2.ListNodesRequest(), timeout=self.config.unary_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.address) from exc
        return list(reply.nodes)

    async def node_names(self) -> dict[str, str]:
        """Node id -> a name to show (the node's name, else its model)."""
        return {n.info.node_id: n.info.name or n.info.model for n in await self.nodes()}

    async def feedback(self, query_id: str, correct: bool, answer: str = "", feedback_token: str = ""
                       ) -> list[dellm_pb2.NodeReward]:
        """Judge a query this client asked: ``feedback_token`` is its final event's ``feedback_token``."""
        try:
            reply = await self._stub.Feedback(
                dellm_pb2.FeedbackRequest(query_id=query_id, correct=correct, answer=answer,
                                          feedback_token=feedback_token),
                timeout=self.config.unary_timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self.address) from exc
        return list(reply.rewards)
