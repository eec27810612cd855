"""CoordinatorService over gRPC: thin methods that translate to and from ``Coordinator``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from dellm.coordinator.convert import event_to_proto, node_status_to_proto, reward_to_proto
from dellm.coordinator.core import Coordinator
from dellm.coordinator.errors import CoordinatorError
from dellm.coordinator.query_feed import QueryFeed
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, new_server, peer_host, set_serving, wait_for_signal
from dellm.protos.wire import description_from_proto

log = logging.getLogger(__name__)
SERVICE_NAME = dellm_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


class CoordinatorServicer(dellm_pb2_grpc.CoordinatorServiceServicer):
    def __init__(self, coordinator: Coordinator, feed: QueryFeed | None = None) -> None:
        self._coordinator = coordinator
        self._feed = feed or QueryFeed()

    async def Ask(
        self, request: dellm_pb2.AskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dellm_pb2.AskEvent]:
        client = peer_host(context.peer()) or context.peer()  # the per-client limit counts by host
        tracker = self._feed.track(request.query, client)
        try:
            async for event in self._coordinator.ask(request.query, request.reference_answer, client):
                message = event_to_proto(event)
                tracker.see(message)
                yield message
        except CoordinatorError as exc:
            tracker.failed(exc.status.name, str(exc))
            await context.abort(exc.status, str(exc))
        except asyncio.CancelledError:
            tracker.finish("cancelled", "the client went away")
            raise
        except Exception as exc:
            tracker.finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            tracker.finish("answered" if tracker.summary.HasField("final") else "cancelled")

    async def Watch(
        self, request: dellm_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dellm_pb2.QuerySummary]:
        async for summary in self._feed.watch(request.replay):
            yield summary

    async def Feedback(
        self, request: dellm_pb2.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.FeedbackReply:
        try:
            applied = await self._coordinator.feedback(request.query_id, request.correct, request.answer,
                                                       request.feedback_token)
        except CoordinatorError as exc:
            await context.abort(exc.status, str(exc))
        return dellm_pb2.FeedbackReply(rewards=[reward_to_proto(r) for r in applied])

    async def ListNodes(
        self, request: dellm_pb2.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.ListNodesReply:
        route, tally = self._coordinator.config.route, self._coordinator.canaries.tally
        return dellm_pb2.ListNodesReply(nodes=[
            node_status_to_proto(record, in_flight, route, tally.get(record.node_id, (0, 0)))
            for record, in_flight in self._coordinator.nodes()])

    async def Join(
        self, request: dellm_pb2.JoinRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.JoinReply:
        try:
            record = await self._coordinator.join(description_from_proto(request.info), request.node_secret,
                                                  peer_host(context.peer()) or context.peer())
        except CoordinatorError as exc:
            await context.abort(exc.status, str(exc))
        return dellm_pb2.JoinReply(node_id=record.node_id, fitness=record.fitness)

    async def Leave(
        self, request: dellm_pb2.LeaveRequest, context: grpc.aio.ServicerContext
    ) -> dellm_pb2.LeaveReply:
        try:
            self._coordinator.leave(request.node_id, request.node_secret, request.address)
        except CoordinatorError as exc:
            await context.abort(exc.status, str(exc))
        return dellm_pb2.LeaveReply()


@dataclass
class RunningCoordinator:
    server: grpc.aio.Server
    address: str
    coordinator: Coordinator

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)
        await self.coordinator.close()


async def start_coordinator(coordinator: Coordinator, listen: str) -> RunningCoordinator:
    """Start serving on ``listen`` (port 0: any free port) and return the running server.

    The coordinator's ``security`` (token, TLS) guards this server as it guards its calls to nodes.
    """
    security = coordinator.security
    server = new_server(security)
    dellm_pb2_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorServicer(coordinator), server)
    health_servicer = add_health_and_reflection(server, [SERVICE_NAME])
    address = bind(server, listen, security)
    await server.start()
    await coordinator.start()
    await set_serving(health_servicer, [SERVICE_NAME], True)
    log.info("coordinator serving on %s (cluster %r; %s)", address, coordinator.config.cluster, security.describe())
    return RunningCoordinator(server, address, coordinator)


async def serve(coordinator: Coordinator, listen: str, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then let in-flight queries finish within the grace period."""
    running = await start_coordinator(coordinator, listen)
    print(f"dellm-coordinator listening on {running.address}", flush=True)  # the CLI's readiness line
    try:
        await wait_for_signal(stop)
        log.info("shutting down; draining in-flight queries for up to %.1fs", coordinator.config.shutdown_grace_s)
    finally:
        await running.stop(coordinator.config.shutdown_grace_s)
