"""The coordinator and scripted nodes over real gRPC, in one process on loopback."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dellm.client.api import DellmClient
from dellm.client.errors import InvalidQueryError, NotFoundError, UnavailableError
from dellm.coordinator.config import CoordinatorConfig, RouteConfig
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from tests.conftest import Cluster, script

SEED = "Calculate 10% interest on $1000 then find best savings accounts"
RIGHT = [
    {"pattern": "(?i)savings accounts", "reply": "Online high-yield savings accounts and credit unions.",
     "delay": 0.005},
    {"pattern": "(?i)10% (interest )?(of|on)", "reply": "10% of $1000 is $100. Answer: 100", "delay": 0.005},
]
WRONG = [
    {"pattern": "(?i)savings accounts", "reply": "Online high-yield savings accounts and credit unions.",
     "delay": 0.005},
    {"pattern": "(?i)10% (interest )?(of|on)", "reply": "It is $50. Answer: 50", "delay": 0.005, "confidence": 0.99},
]


async def collect(address: str, query: str) -> list[dellm_pb2.AskEvent]:
    async with DellmClient(address) as client:
        return [event async for event in client.ask(query)]


def kinds(events: list[dellm_pb2.AskEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


async def test_seed_query_streams_every_stage_in_order(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        await cluster.add_node(name, script(RIGHT))
    events = await collect(cluster.address, SEED)
    order = kinds(events)
    assert order[0] == "plan" and order[-1] == "final"
    plan = events[0].plan
    assert [c.operation for c in plan.chunks] == [dellm_pb2.MATH_OP, dellm_pb2.SEARCH_OP]
    assert list(plan.chunks[1].depends_on) == ["c1"]
    # tokens of a chunk stream before its result; c2 depends on c1, but c1 is arithmetic the coordinator
    # computes itself (its result states 100 whatever the nodes say), so c2 does not wait for c1's nodes
    positions = [(kind, getattr(e, kind).chunk_id) for kind, e in zip(order, events, strict=True)
                 if kind in ("chunk_token", "chunk_result", "assignment")]
    first_c1_token = positions.index(("chunk_token", "c1"))
    c1_result = positions.index(("chunk_result", "c1"))
    c2_assignment = positions.index(("assignment", "c2"))
    assert first_c1_token < c1_result and c2_assignment < c1_result
    final = events[-1].final
    assert final.query_id == plan.query_id
    assert "100" in final.answer and "savings" in final.answer.lower()
    assert final.synthesis == "template"
    assert {t.stage for t in final.timings} >= {"decompose", "dispatch+assemble", "synthesize", "reward"}
    c1 = final.chunks[0]
    c1_result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    # one node was asked: the coordinator computes 10% of 1000 itself, so the exact check is the second
    # opinion (a wrong answer would be escalated to other nodes), and nobody pays twice
    assigned = next(e.assignment for e in events if e.WhichOneof("event") == "assignment")
    assert len(assigned.node_ids) == 1
    assert len(c1.node_ids) == 1 and not c1_result.cancelled_node_ids and c1.agreement == pytest.approx(1.0)
    assert all(r.verdict == dellm_pb2.CORRECT for r in final.rewards if r.chunk_id == "c1")
    assert all(r.fitness_after > r.fitness_before for r in final.rewards if r.chunk_id == "c1")


async def test_a_step_waits_for_a_result_the_coordinator_cannot_compute(cluster: Cluster) -> None:
    rules = [{"pattern": "(?i)Using those results", "reply": "About 2.1 million.", "delay": 0.005},
             {"pattern": "(?i)capital of France", "reply": "Paris", "delay": 0.2}]
    for name in ("a", "b"):
        await cluster.add_node(name, script(rules))
    events = await collect(cluster.address, "Find the capital of France, then tell me its population")
    assert list(events[0].plan.chunks[1].depends_on) == ["c1"]
    positions = [(e.WhichOneof("event"), getattr(e, e.WhichOneof("event")).chunk_id) for e in events
                 if e.WhichOneof("event") in ("chunk_result", "assignment")]
    assert positions.index(("chunk_result", "c1")) < positions.index(("assignment", "c2"))
    assert "Paris" in events[-1].final.answer


@pytest.mark.parametrize("checked_redundancy", [1, 2])
async def test_exact_check_beats_a_confident_wrong_node(tmp_path: Path, checked_redundancy: int) -> None:
    """Asked of both at once (2), or of one then, once proven wrong, of the other (1, the default: the
    wrong node is the faster)."""
    cluster = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0,
                                                  route=RouteConfig(checked_redundancy=checked_redundancy)))
    await cluster.start_coordinator()
    try:
        await cluster.add_node("right", script(RIGHT, delay=0.2))
        await cluster.add_node("wrong", script(WRONG))
        for _ in range(3):  # measured latencies: the wrong node is the faster and is routed first
            await collect(cluster.address, "What is 20% of 1000?")
        events = await collect(cluster.address, "What is 10% of 1000?")
    finally:
        await cluster.close()
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    assert "100" in result.answer and not result.unanimous and result.groups == 2
    rewards = {r.node_id[:5]: r for r in events[-1].final.rewards}
    assert rewards["right"].verdict == dellm_pb2.CORRECT and rewards["right"].source == "exact_check"
    assert rewards["wrong"].verdict == dellm_pb2.WRONG and rewards["wrong"].reward == pytest.approx(-0.05)


async def test_node_feedback_arrives_and_is_stored(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    await cluster.add_node("b", script(RIGHT))
    events = await collect(cluster.address, "What is 10% of 1000?")
    answered = {r.node_id[:1] for r in events[-1].final.rewards}  # the other stream may have been cancelled
    await cluster.wait_for(lambda: all(len(cluster.stores[n].entries()) == 1 for n in answered))
    entry = cluster.stores[sorted(answered)[0]].entries()[0]
    assert entry.verdict == "CORRECT" and entry.correct_answer == "100" and "10% of 1000" in entry.prompt
    assert entry.source == "exact_check"


@pytest.mark.parametrize(
    ("query", "message"),
    [("", "empty"), ("   \n\t ", "empty"), ("x" * 5000, "maximum is 4000")],
    ids=["empty", "whitespace", "too-long"],
)
async def test_invalid_query_is_invalid_argument(cluster: Cluster, query: str, message: str) -> None:
    await cluster.add_node("a", script(RIGHT))
    with pytest.raises(InvalidQueryError, match=message):
        await collect(cluster.address, query)


async def test_no_nodes_is_unavailable_and_says_how_to_start_one(cluster: Cluster) -> None:
    with pytest.raises(UnavailableError, match="dellm-node"):
        await collect(cluster.address, "What is 10% of 1000?")


async def test_node_failing_mid_stream_is_replaced_and_counted(cluster: Cluster) -> None:
    dying = [{"pattern": ".", "reply": "10% of 1000 is 100", "fail_after": 2, "delay": 0.005}]
    await cluster.add_node("dying", script(dying))
    await cluster.add_node("ok", script(RIGHT))
    # One chunk, redundancy 1 would pick by score; force both failure and retry with two chunks' worth.
    events = await collect(cluster.address, "What is 10% of 1000?")
    assignments = [e.assignment for e in events if e.WhichOneof("event") == "assignment"]
    assert "100" in events[-1].final.answer
    result = next(e.chunk_result for e in events if e.WhichOneof("event") == "chunk_result")
    failed = [v for v in result.votes if v.failed]
    assert [v.node_id[:5] for v in failed] == ["dying"] and "scripted failure" in failed[0].error
    # the dying node's failure shows in its record and in its reward
    async with DellmClient(cluster.address) as client:
        status = {n.info.name: n for n in await client.nodes()}
    assert status["dying"].failures == 1 and status["ok"].failures == 0
    penalty = next(r for r in events[-1].final.rewards if r.node_id.startswith("dying"))
    assert penalty.verdict == dellm_pb2.WRONG and penalty.source == "failure"
    assert len(assignments) >= 1


async def test_failed_slot_is_retried_on_the_next_node(cluster: Cluster) -> None:
    dying = [{"pattern": ".", "reply": "one two three four", "fail_after": 1}]
    await cluster.add_node("dying1", script(dying))
    await cluster.add_node("dying2", script(dying))
    await cluster.add_node("ok", script(RIGHT, delay=0.3))
    events = await collect(cluster.address, "What is 10% of 1000?")
    retries = [e.assignment for e in events if e.WhichOneof("event") == "assignment" and e.assignment.retry]
    assert retries and all("failed" in r.reason for r in retries)
    answered = {r.node_id[:2] for r in events[-1].final.rewards if r.verdict == dellm_pb2.CORRECT}
    assert answered == {"ok"}  # whichever slot reached it, the working node answered
    assert "100" in events[-1].final.answer


async def test_every_node_failing_is_unavailable(cluster: Cluster) -> None:
    dying = [{"pattern": ".", "reply": "one two", "fail_after": 0}]
    await cluster.add_node("d1", script(dying))
    await cluster.add_node("d2", script(dying))
    with pytest.raises(UnavailableError, match="could not be answered"):
        await collect(cluster.address, "What is 10% of 1000?")


async def test_user_feedback_rewards_the_winning_nodes(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    events = await collect(cluster.address, "Find the best savings accounts")
    query_id, token = events[-1].final.query_id, events[-1].final.feedback_token
    async with DellmClient(cluster.address) as client:
        rewards = await client.feedback(query_id, correct=False, answer="a credit union", feedback_token=token)
        assert [r.node_id[:1] for r in rewards] == ["a"]
        assert rewards[0].verdict == dellm_pb2.WRONG and rewards[0].fitness_after < rewards[0].fitness_before
        with pytest.raises(NotFoundError, match="no query"):
            await client.feedback("does-not-exist", correct=True)
    await cluster.wait_for(lambda: any(e.source == "user" for e in cluster.stores["a"].entries()))
    user = next(e for e in cluster.stores["a"].entries() if e.source == "user")
    assert user.correct_answer == "a credit union" and user.verdict == "WRONG"


async def test_client_disconnect_cancels_node_streams(cluster: Cluster) -> None:
    slow = [{"pattern": ".", "reply": " ".join(["word"] * 200), "delay": 0.05}]
    await cluster.add_node("slow", script(slow))
    service = cluster.coordinator.coordinator
    async with DellmClient(cluster.address) as client:
        async for event in client.ask("Tell me a story"):
            if event.WhichOneof("event") == "chunk_token":
                break  # leaving the loop cancels the call
    await cluster.wait_for(lambda: sum(service.pool.in_flight.values()) == 0, timeout=3.0)
    node = service.registry.list_nodes()[0]
    assert node.answers == 0 and node.failures == 0  # a cancelled stream is not the node's fault
    # The node stopped generating: its model is free again at once (the full reply would take 10 s).
    async with grpc.aio.insecure_channel(node.info.address) as channel:
        stream = dellm_pb2_grpc.NodeServiceStub(channel).Generate(
            dellm_pb2.GenerateRequest(prompt="again", max_tokens=3), timeout=1.5)
        first = await stream.read()
    assert first.text == "word"


async def test_health_and_reflection_on_both_servers(cluster: Cluster) -> None:
    node = await cluster.add_node("a", script(RIGHT))
    for address, service in ((cluster.address, "dellm.v1.CoordinatorService"),
                             (node.address, "dellm.v1.NodeService")):
        async with grpc.aio.insecure_channel(address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name async for reply in stream for s in reply.list_services_response.service}
            assert service in names and "grpc.health.v1.Health" in names


async def test_join_with_an_address_that_is_not_that_node_is_refused(cluster: Cluster) -> None:
    real = await cluster.add_node("real", script(RIGHT))
    forged = dellm_pb2.NodeInfo(node_id="f" * 32, address=real.address, model="forged")
    async with grpc.aio.insecure_channel(cluster.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await dellm_pb2_grpc.CoordinatorServiceStub(channel).Join(dellm_pb2.JoinRequest(info=forged), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not match what it claimed: node_id" in caught.value.details()


async def test_list_nodes_reports_figures(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    await collect(cluster.address, "What is 10% of 1000?")
    async with DellmClient(cluster.address) as client:
        (node,) = await client.nodes()
    assert node.info.name == "a" and node.info.backend == "scripted" and node.state == "up"
    assert node.answers == 1 and node.latency_ms > 0 and node.last_seen_unix > 0 and node.in_flight == 0


async def test_fitness_survives_a_coordinator_restart(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    await cluster.add_node("b", script(RIGHT))
    for _ in range(3):
        await collect(cluster.address, "What is 10% of 1000?")
    before = {n.node_id: n.fitness for n in cluster.coordinator.coordinator.registry.list_nodes()}
    assert max(before.values()) > 0.5
    for name in list(cluster.nodes):
        await cluster.stop_node(name)
    await cluster.coordinator.stop(0.1)
    await cluster.start_coordinator()
    restored = cluster.coordinator.coordinator.registry.list_nodes()
    assert {n.node_id: n.fitness for n in restored} == pytest.approx(before)
    assert all(n.state == "down" for n in restored)  # until they rejoin
    await cluster.add_node("a", script(RIGHT))
    rejoined = cluster.coordinator.coordinator.registry.get("a" + "0" * 31)
    assert rejoined.state == "up" and rejoined.fitness == pytest.approx(before["a" + "0" * 31])


async def test_independent_chunks_run_in_parallel_on_distinct_nodes(cluster: Cluster) -> None:
    slow = [{"pattern": ".", "reply": "done now", "delay": 0.1}]
    for name in ("a", "b", "c", "d"):
        await cluster.add_node(name, script(slow))
    events = await collect(cluster.address, "Find cheap laptops and find cheap phones")
    plan = events[0].plan
    assert len(plan.chunks) == 2 and not any(c.depends_on for c in plan.chunks)
    assigned = {e.assignment.chunk_id: set(e.assignment.node_ids)
                for e in events if e.WhichOneof("event") == "assignment"}
    assert not assigned["c1"] & assigned["c2"]  # load spreads: no node serves both at once
    order = [(e.WhichOneof("event"), getattr(e, e.WhichOneof("event")).chunk_id) for e in events[1:-1]
             if e.WhichOneof("event") in ("chunk_token", "chunk_result")]
    # both chunks stream before either finishes: they ran at the same time
    assert order.index(("chunk_token", "c2")) < order.index(("chunk_result", "c1"))
    assert order.index(("chunk_token", "c1")) < order.index(("chunk_result", "c2"))
