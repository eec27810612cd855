"""User feedback over real gRPC: only the asker may judge a query, once per (query, chunk, node).

Before: 20 replays of `--correct` on one query took a node from 0.759 to 0.967, a node that reused
the query ids it was sent reached fitness 1.0, and a user's 3.9 MB answer became a few-shot example.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from dellm.client.api import DellmClient
from dellm.client.errors import AuthError, InvalidQueryError
from dellm.coordinator.user_verdicts import MAX_USER_ANSWER_CHARS
from dellm.node.daemon import SERVICE_NAME, join_coordinator
from dellm.node.state import MAX_EXAMPLE_CHARS, FeedbackEntry, FeedbackStore
from dellm.protos import dellm_pb2, dellm_pb2_grpc
from dellm.protos.transport import add_health_and_reflection, bind, channel, new_server, set_serving
from dellm.protos.wire import PROTOCOL_VERSION
from tests.conftest import REPO, Cluster, script

RIGHT = [{"pattern": ".", "reply": "A credit union pays the most interest."}]
QUERY = "Find the best savings accounts"


async def ask(address: str, query: str = QUERY) -> dellm_pb2.FinalEvent:
    async with DellmClient(address) as client:
        events = [event async for event in client.ask(query)]
    return events[-1].final


def fitness(cluster: Cluster, name: str) -> float:
    assert cluster.coordinator is not None
    return cluster.coordinator.coordinator.registry.get(cluster.nodes[name].servicer.info.node_id).fitness


async def test_twenty_replays_of_correct_change_fitness_once(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    final = await ask(cluster.address)
    start = fitness(cluster, "a")
    async with DellmClient(cluster.address) as client:
        first = await client.feedback(final.query_id, True, feedback_token=final.feedback_token)
        once = fitness(cluster, "a")
        assert once > start and first[0].fitness_after == pytest.approx(once)
        for _ in range(19):
            again = await client.feedback(final.query_id, True, feedback_token=final.feedback_token)
            assert again[0].reward == 0.0 and again[0].fitness_after == again[0].fitness_before
        assert fitness(cluster, "a") == pytest.approx(once)

        # the other verdict replaces the first: as if only "wrong" had ever been said
        await client.feedback(final.query_id, False, feedback_token=final.feedback_token)
        only_wrong = fitness(cluster, "a")
        assert only_wrong < start
        for _ in range(5):  # and a flip back and forth moves nothing past the two verdicts' own effect
            await client.feedback(final.query_id, True, feedback_token=final.feedback_token)
            assert fitness(cluster, "a") == pytest.approx(once)
            await client.feedback(final.query_id, False, feedback_token=final.feedback_token)
            assert fitness(cluster, "a") == pytest.approx(only_wrong)


async def test_feedback_without_the_askers_token_is_refused(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    final = await ask(cluster.address)
    other = await ask(cluster.address)
    start = fitness(cluster, "a")
    async with DellmClient(cluster.address) as client:
        for token in ("", "guess", other.feedback_token):  # none, made up, another query's
            with pytest.raises(AuthError, match="only from the client that asked it"):
                await client.feedback(final.query_id, True, feedback_token=token)
        with pytest.raises(InvalidQueryError, match="the most a right answer may be"):
            await client.feedback(final.query_id, False, "x" * (MAX_USER_ANSWER_CHARS + 1), final.feedback_token)
    assert fitness(cluster, "a") == start


class QueryIdCollector(dellm_pb2_grpc.NodeServiceServicer):
    """Test double: a node that answers like the honest one and keeps every query id it is sent."""

    def __init__(self) -> None:
        self.query_ids: list[str] = []
        self.info = dellm_pb2.NodeInfo(node_id="replayer".ljust(32, "0"), name="replayer", model="replayer",
                                       backend="scripted", protocol_version=PROTOCOL_VERSION, cluster="default")

    async def Info(self, request: dellm_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> dellm_pb2.NodeInfo:
        return self.info

    async def Generate(self, request: dellm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[dellm_pb2.TokenChunk]:
        self.query_ids.append(request.query_id)
        yield dellm_pb2.TokenChunk(text=RIGHT[0]["reply"])
        yield dellm_pb2.TokenChunk(done=True, finish_reason="stop", confidence=0.9)

    async def FeedbackBatch(self, request: dellm_pb2.NodeFeedbackBatch, context: grpc.aio.ServicerContext
                            ) -> dellm_pb2.NodeFeedbackReply:
        return dellm_pb2.NodeFeedbackReply(stored=len(request.items))


async def test_a_node_cannot_judge_the_queries_it_was_sent(cluster: Cluster) -> None:
    replayer = QueryIdCollector()
    server = new_server()
    replayer.info.address = bind(server, "127.0.0.1:0")
    dellm_pb2_grpc.add_NodeServiceServicer_to_server(replayer, server)
    await set_serving(add_health_and_reflection(server, [SERVICE_NAME]), [SERVICE_NAME], True)
    await server.start()
    try:
        await join_coordinator(cluster.address, replayer.info, 5.0)
        await ask(cluster.address)
        assert replayer.query_ids
        registry = cluster.coordinator.coordinator.registry  # type: ignore[union-attr]
        start = registry.get(replayer.info.node_id).fitness
        async with channel(cluster.address) as ch:
            stub = dellm_pb2_grpc.CoordinatorServiceStub(ch)
            for query_id in replayer.query_ids * 10:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Feedback(dellm_pb2.FeedbackRequest(query_id=query_id, correct=True), timeout=5)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert registry.get(replayer.info.node_id).fitness == start
    finally:
        await server.stop(None)


async def test_dellm_ask_keeps_the_token_for_dellm_feedback(cluster: Cluster, tmp_path: Path) -> None:
    """The command line carries the token through: `dellm ask` keeps it next to the query id."""
    await cluster.add_node("a", script(RIGHT))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}

    async def dellm(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm.client.cli", *args, "--coordinator", cluster.address,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await dellm("ask", QUERY, "--json")
    assert code == 0, err
    final = json.loads(out.splitlines()[-1])["final"]
    start = fitness(cluster, "a")
    for _ in range(3):
        code, out, err = await dellm("feedback", final["query_id"], "--correct")
        assert code == 0 and "feedback recorded" in out, err
    assert fitness(cluster, "a") > start
    once = fitness(cluster, "a")
    assert (tmp_path / "xdg" / "dellm" / "feedback_tokens.json").stat().st_mode & 0o077 == 0
    env["XDG_STATE_HOME"] = str(tmp_path / "someone-else")  # another user has no token for it
    code, out, err = await dellm("feedback", final["query_id"], "--wrong")
    assert code == 6 and "PERMISSION_DENIED" in err
    assert fitness(cluster, "a") == once


def test_a_huge_verified_answer_is_never_a_few_shot_example(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "feedback.sqlite3")
    try:
        def entry(prompt: str, answer: str) -> FeedbackEntry:
            return FeedbackEntry("q", "c1", prompt, answer, "CORRECT", 0.05, answer, 0.6, "user", 0.0)
        store.add_many([entry("Which savings account pays best?", "A credit union."),
                        entry("Which savings account pays most?", "y" * (MAX_EXAMPLE_CHARS + 1))])
        examples = store.verified_examples("Which savings account is best?", 5)
        assert [e.answer for e in examples] == ["A credit union."]
        assert all(len(answer) <= MAX_EXAMPLE_CHARS for _, answer in store.training_pairs())
    finally:
        store.close()


def test_a_token_that_cannot_be_kept_is_said_not_raised(tmp_path: Path) -> None:
    from dellm.client.feedback_tokens import FeedbackTokens

    (tmp_path / "a-file").write_text("")
    assert "a-file" in (FeedbackTokens(tmp_path / "a-file" / "tokens.json").put("q", "t") or "")
    kept = FeedbackTokens(tmp_path / "tokens.json")
    assert kept.put("q", "t") is None and kept.get("q") == "t" and kept.get("other") == ""
