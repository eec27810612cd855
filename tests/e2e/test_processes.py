"""End to end with real processes: dellm-coordinator, dellm-node and the dellm CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.client.local_cluster import LocalCluster, NodeSpec
from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow
GOOD = NodeSpec("good", backend="scripted", script=FIXTURES / "good.toml")


def dellm(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dellm.client.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def node_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dellm.node.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_coordinator()
        yield cluster


def test_ask_json_prints_one_event_per_line_ending_with_final(local: LocalCluster) -> None:
    local.start_node(GOOD)
    local.start_node(NodeSpec("good2", backend="scripted", script=FIXTURES / "good.toml"))
    local.wait_for_nodes(2)
    done = dellm("ask", "Calculate 10% interest on $1000 then find best savings accounts", "--json",
                 "--coordinator", local.coordinator_address)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert "plan" in events[0] and "final" in events[-1]
    assert {"assignment", "chunk_token", "chunk_result"} <= {k for e in events for k in e}
    final = events[-1]["final"]
    assert "100" in final["answer"] and final["query_id"] == events[0]["plan"]["query_id"]

    human = dellm("ask", "What is 10% of 1000?", "--coordinator", local.coordinator_address)
    assert human.returncode == 0 and "plan for query" in human.stdout and "answer:" in human.stdout
    assert "consensus:" in human.stdout and "(exact_check)" in human.stdout

    listed = dellm("nodes", "--json", "--coordinator", local.coordinator_address)
    nodes = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {n["info"]["name"] for n in nodes} == {"good", "good2"}
    assert all(n["state"] == "up" and n["fitness"] > 0.5 for n in nodes)

    ok = dellm("feedback", final["query_id"], "--correct", "--coordinator", local.coordinator_address)
    assert ok.returncode == 0 and "feedback recorded" in ok.stdout
    missing = dellm("feedback", "no-such-query", "--wrong", "--coordinator", local.coordinator_address)
    assert missing.returncode == 4 and "NOT_FOUND" in missing.stderr


def test_cli_errors_are_clear(local: LocalCluster) -> None:
    no_nodes = dellm("ask", "What is 10% of 1000?", "--coordinator", local.coordinator_address)
    assert no_nodes.returncode == 3 and "dellm-node" in no_nodes.stderr
    empty = dellm("ask", "   ", "--coordinator", local.coordinator_address)
    assert empty.returncode == 2 and "INVALID_ARGUMENT" in empty.stderr and "empty" in empty.stderr
    nobody = dellm("ask", "hi", "--coordinator", "127.0.0.1:9")
    assert nobody.returncode == 3 and "no coordinator answering at 127.0.0.1:9" in nobody.stderr


def _ask_and_kill(local: LocalCluster, sig: signal.Signals) -> tuple[list, str]:
    """Ask, and send ``sig`` to whichever node streams first, once it has streamed a token."""

    async def run() -> tuple[list, str]:
        async with DellmClient(local.coordinator_address) as client:
            names = {n.info.node_id: n.info.name for n in await client.nodes()}
            events, victim = [], ""
            async for event in client.ask("Tell me about Paris"):
                events.append(event)
                if event.WhichOneof("event") == "chunk_token" and not victim:
                    victim = names[event.chunk_token.node_id]
                    os.kill(local.node(victim).process.pid, sig)
            return events, victim

    return asyncio.run(run())


def test_node_killed_mid_stream_has_its_chunk_redispatched(local: LocalCluster) -> None:
    for name in ("slow-a", "slow-b"):
        local.start_node(NodeSpec(name, backend="scripted", script=FIXTURES / "slow.toml"))
    local.wait_for_nodes(2)
    events, victim = _ask_and_kill(local, signal.SIGKILL)
    retries = [e.assignment for e in events if e.WhichOneof("event") == "assignment" and e.assignment.retry]
    assert len(retries) == 1 and "UNAVAILABLE" in retries[0].reason
    final = events[-1].final
    assert "Paris" in final.answer
    penalty = [r for r in final.rewards if r.source == "failure"]
    assert len(penalty) == 1 and penalty[0].reward < 0
    listed = dellm("nodes", "--json", "--coordinator", local.coordinator_address)
    state = {json.loads(line)["info"]["name"]: json.loads(line) for line in listed.stdout.splitlines()}
    assert state[victim]["state"] == "down" and int(state[victim]["failures"]) == 1


def test_sigterm_drains_the_in_flight_stream(local: LocalCluster) -> None:
    local.start_node(NodeSpec("slow-a", backend="scripted", script=FIXTURES / "slow.toml"))
    local.wait_for_nodes(1)
    events, victim = _ask_and_kill(local, signal.SIGTERM)
    assert not [e for e in events if e.WhichOneof("event") == "assignment" and e.assignment.retry]
    assert events[-1].final.answer.endswith("friends")  # the whole answer arrived
    assert local.node(victim).process.wait(timeout=30) == 0  # and then the node exited cleanly


def test_node_id_is_stable_across_restarts(local: LocalCluster) -> None:
    first = local.start_node(GOOD)
    local.wait_for_nodes(1)
    listed = dellm("nodes", "--json", "--coordinator", local.coordinator_address)
    node_id = json.loads(listed.stdout.splitlines()[0])["info"]["node_id"]
    first.process.send_signal(signal.SIGTERM)
    first.process.wait(timeout=30)
    local.processes.remove(first)
    local.start_node(GOOD)
    local.wait_for_nodes(1)
    listed = dellm("nodes", "--json", "--coordinator", local.coordinator_address)
    assert [json.loads(line)["info"]["node_id"] for line in listed.stdout.splitlines()] == [node_id]


@pytest.mark.parametrize(
    ("make_model", "message"),
    [
        (lambda d: d / "missing.gguf", "missing.gguf"),
        (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "notes.txt"),
        (lambda d: (d / "junk.gguf").write_bytes(b"NOPE" + os.urandom(512)) and d / "junk.gguf", "junk.gguf"),
        (lambda d: (d / "corrupt.gguf").write_bytes(b"GGUF" + os.urandom(4096)) and d / "corrupt.gguf",
         "corrupt.gguf"),
        (lambda d: Path("no-such-model-name"), "no-such-model-name"),
    ],
    ids=["missing-file", "not-gguf-suffix", "bad-magic", "corrupt-gguf", "unknown-name"],
)
def test_bad_model_exits_non_zero_naming_the_file(tmp_path: Path, make_model, message: str) -> None:
    model = make_model(tmp_path)
    done = node_cli("--model", str(model), "--no-advertise", "--state-dir", str(tmp_path / "state"))
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_models_list_names_all_four() -> None:
    done = dellm("models", "list")
    assert done.returncode == 0
    for name in ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m", "qwen2.5-coder-1.5b-instruct",
                 "smollm2-135m-instruct"):
        assert name in done.stdout
    unknown = dellm("models", "pull", "not-a-model")
    assert unknown.returncode == 2 and "not-a-model" in unknown.stderr


def test_a_killed_coordinator_restarts_with_its_fitness_queries_and_nodes(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with LocalCluster(tmp_path) as cluster:
        listen = ["--listen", f"127.0.0.1:{port}", "--canary-interval", "0"]
        cluster.start_coordinator(extra=listen)
        cluster.start_node(GOOD)
        cluster.wait_for_nodes(1)
        asked = dellm("ask", "What is 10% of 1000?", "--json", "--coordinator", cluster.coordinator_address)
        query_id = json.loads(asked.stdout.splitlines()[-1])["final"]["query_id"]
        before = json.loads(dellm("nodes", "--json", "--coordinator", cluster.coordinator_address).stdout)
        coordinator = cluster.node("coordinator")
        coordinator.process.send_signal(signal.SIGKILL)
        coordinator.process.wait()
        cluster.processes.remove(coordinator)
        cluster.start_coordinator(extra=listen)
        cluster.wait_for_nodes(1, timeout=20)  # the node is back with no manual step (health checks)
        after = json.loads(dellm("nodes", "--json", "--coordinator", cluster.coordinator_address).stdout)
        assert after["fitness"] == pytest.approx(before["fitness"]) and after["state"] == "up"
        feedback = dellm("feedback", query_id, "--correct", "--coordinator", cluster.coordinator_address)
        assert feedback.returncode == 0, feedback.stderr  # the query record survived the crash
