"""What only the SQLite registry does (the shared behaviour is in test_registry_contract.py, for both backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.coordinator.registry import QueryRecord, SqliteRegistry
from dellm.protos.wire import NodeDescription

INFO = NodeDescription("node-a", "127.0.0.1:50051", name="laptop", model="qwen2.5-0.5b", backend="llama_cpp")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


@pytest.fixture
def registry(path: Path) -> Iterator[SqliteRegistry]:
    reg = SqliteRegistry(path)
    yield reg
    reg.close()


def _set_fitness(reg: SqliteRegistry, node_id: str, value: float) -> None:
    reg.apply_reward(node_id, 0.0, None, lambda _: value)


def test_reopened_file_keeps_figures_and_marks_nodes_down_until_rejoin(path: Path) -> None:
    first = SqliteRegistry(path)
    first.upsert_node(INFO, now=1.0)
    first.upsert_node(NodeDescription("node-b", "127.0.0.1:50052"), now=1.0)
    first.record_answer("node-a", 250.0, failed=False, alpha=0.3)
    first.apply_reward("node-a", 0.1, True, lambda _: 0.77)
    first.save_query(QueryRecord("q1", "What is 2 + 2?", "4", 5.0, {"chunks": []}))
    first.close()

    second = SqliteRegistry(path)
    try:
        before = second.get("node-a")
        assert (before.fitness, before.latency_ms, before.answers, before.correct) == (0.77, 250.0, 1, 1)
        assert [(n.node_id, n.state) for n in second.list_nodes()] == [("node-a", "down"), ("node-b", "down")]
        assert second.get_query("q1").answer == "4"

        after = second.upsert_node(INFO, now=9.0)

        assert (after.state, after.fitness, after.latency_ms) == ("up", 0.77, 250.0)
        assert second.get("node-b").state == "down"
    finally:
        second.close()


def test_in_memory_registry_works() -> None:
    reg = SqliteRegistry(":memory:")
    try:
        reg.upsert_node(INFO, now=1.0)
        assert reg.get("node-a").fitness == 0.5
    finally:
        reg.close()
