"""Malformed requests and huge ids over real gRPC.

Before: every request that did not parse wrote a 720-byte traceback (200 calls: 144 KB of log), and a
huge id was echoed back in the error details, so the client got RESOURCE_EXHAUSTED instead of NOT_FOUND.
"""

from __future__ import annotations

import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.malformed import MalformedReports
from dellm.protos.transport import channel
from tests.conftest import Cluster, script

GARBAGE = b"\xff\xff\xff\x0f not a protobuf message"
COORDINATOR = ["/dellm.v1.CoordinatorService/" + m for m in ("Feedback", "Join", "Leave", "ListNodes")]
NODE = ["/dellm.v1.NodeService/" + m for m in ("Feedback", "FeedbackBatch", "Info")]


async def garbage_calls(address: str, methods: list[str], streaming: list[str], rounds: int) -> set[grpc.StatusCode]:
    codes = set()
    async with grpc.aio.insecure_channel(address) as ch:
        for _ in range(rounds):
            for method in methods:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await ch.unary_unary(method)(GARBAGE, timeout=5)
                codes.add(failed.value.code())
                assert "malformed request" in (failed.value.details() or "")
            for method in streaming:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    async for _ in ch.unary_stream(method)(GARBAGE, timeout=5):
                        pass
                codes.add(failed.value.code())
    return codes


async def test_malformed_requests_are_refused_and_logged_once_per_peer(
    cluster: Cluster, caplog: pytest.LogCaptureFixture,
) -> None:
    node = await cluster.add_node("a", script([{"pattern": ".", "reply": "Paris."}]))
    with caplog.at_level(logging.INFO):
        codes = await garbage_calls(cluster.address, COORDINATOR, ["/dellm.v1.CoordinatorService/Ask"], 40)
        codes |= await garbage_calls(node.address, NODE, ["/dellm.v1.NodeService/Generate"], 25)
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}  # 300 calls, each refused cleanly
    reports = [r for r in caplog.records if r.name == "dellm.protos.malformed"]
    assert len(reports) == 2 and all("127.0.0.1" in r.getMessage() for r in reports)  # once per server and peer
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]
    assert sum(len(r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING) < 2000

    async with channel(cluster.address) as ch:  # well-formed calls still work, streaming and unary
        nodes = await dellm_pb2_grpc.CoordinatorServiceStub(ch).ListNodes(dellm_pb2.ListNodesRequest(), timeout=5)
        assert len(nodes.nodes) == 1
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


async def test_huge_ids_are_not_echoed(cluster: Cluster) -> None:
    huge = "x" * 3_000_000
    async with channel(cluster.address) as ch:
        stub = dellm_pb2_grpc.CoordinatorServiceStub(ch)
        calls = [(stub.Feedback, dellm_pb2.FeedbackRequest(query_id=huge, correct=True), grpc.StatusCode.NOT_FOUND),
                 (stub.Leave, dellm_pb2.LeaveRequest(node_id=huge), grpc.StatusCode.NOT_FOUND),
                 (stub.Join, dellm_pb2.JoinRequest(info=dellm_pb2.NodeInfo(node_id=huge, address="127.0.0.1:1")),
                  grpc.StatusCode.FAILED_PRECONDITION)]
        for method, request, code in calls:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await method(request, timeout=10)
            assert failed.value.code() == code
            details = failed.value.details() or ""
            assert len(details) < 300 and "(3000000 characters)" in details


def test_reports_count_what_they_do_not_log() -> None:
    now = [0.0]
    reports = MalformedReports(every_s=60.0, clock=lambda: now[0])
    assert reports.report("10.0.0.1", "Ask", "DecodeError")
    assert not any(reports.report("10.0.0.1", "Ask", "DecodeError") for _ in range(99))
    assert reports.report("10.0.0.2", "Ask", "DecodeError")  # another peer: its own report
    now[0] = 61.0
    assert reports.report("10.0.0.1", "Ask", "DecodeError")
