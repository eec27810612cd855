"""The coordinator's in-memory node table and its write-behind cache over a SQLite file.

The NodeRegistry contract itself runs against the cache in test_registry_contract.py; these are
what only the cache does: batched writes that reach the file, reads before a flush, a failing store.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dellm.coordinator.registry import CachedRegistry, NodeTable, QueryRecord, SqliteRegistry
from dellm.coordinator.types import NodeRecord
from dellm.protos.wire import NodeDescription

INFO = NodeDescription("node-a", "127.0.0.1:50051", name="laptop", model="qwen2.5-0.5b", backend="llama_cpp")


def _open(path: Path, interval: float = 60.0) -> CachedRegistry:
    return CachedRegistry(SqliteRegistry(path), flush_interval_s=interval)


def _on_disk(path: Path) -> list[NodeRecord]:
    """What another handle reads from the file (opening one marks every node down: compare states apart)."""
    reader = SqliteRegistry(path)
    try:
        return reader.list_nodes()
    finally:
        reader.close()


def test_writes_are_seen_at_once_and_reach_the_file_on_flush(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    registry = _open(path)
    try:
        registry.upsert_node(INFO, now=1.0)
        registry.record_answer("node-a", 200.0, failed=False, alpha=0.3)
        registry.apply_reward("node-a", 0.05, True, lambda f: f + 0.05, "MATH_OP")
        assert registry.get("node-a").answers == 1  # memory first
        assert _on_disk(path) == []  # nothing written yet

        registry.flush()

        (stored,) = _on_disk(path)
        assert stored == replace(registry.get("node-a"), state="down")
    finally:
        registry.close()


def test_the_flusher_writes_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    registry = _open(path, interval=0.05)
    try:
        registry.upsert_node(INFO, now=1.0)
        deadline = time.monotonic() + 5
        while not _on_disk(path) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [n.node_id for n in _on_disk(path)] == ["node-a"]
    finally:
        registry.close()


def test_a_saved_query_is_readable_before_and_after_its_flush(tmp_path: Path) -> None:
    registry = _open(tmp_path / "r.sqlite3")
    record = QueryRecord("q1", "What is 2 + 2?", "4", 5.0, {"chunks": []})
    try:
        registry.save_query(record)
        assert registry.get_query("q1") == record
        registry.flush()
        assert registry.get_query("q1") == record
    finally:
        registry.close()


def test_close_flushes_and_a_restart_reads_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    registry = _open(path)
    registry.upsert_node(INFO, now=1.0)
    for _ in range(50):
        registry.apply_reward("node-a", 0.05, True, lambda f: 0.9 * f + 0.1 * 1.0, "MATH_OP")
    expected = registry.get("node-a")
    registry.close()

    reopened = _open(path)
    try:
        record = reopened.get("node-a")
        assert (record.fitness, record.correct, record.op_stats) == (expected.fitness, 50, expected.op_stats)
        assert record.state == "down"  # a restarted coordinator waits for its nodes to come back
        assert len(reopened.table()) == 0
    finally:
        reopened.close()


def test_a_failing_store_is_logged_and_memory_stays_right(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backing = SqliteRegistry(tmp_path / "r.sqlite3")
    registry = CachedRegistry(backing, flush_interval_s=60.0)
    registry._closing.set()  # no background flush: this test's flush is the one that meets the broken store
    registry._wake.set()
    registry._flusher.join()
    try:
        registry.upsert_node(INFO, now=1.0)
        registry.save_query(QueryRecord("q1", "q", "a", 1.0, {}))
        backing._db.execute("DROP TABLE nodes")  # the store breaks under the cache

        with caplog.at_level(logging.ERROR):
            registry.flush()

        assert "could not be written" in caplog.text
        assert registry.get("node-a").fitness == 0.5
        assert registry.get_query("q1").answer == "a"
    finally:
        backing.close()  # not registry.close(): its final flush would meet the broken store again


def test_node_table_indexes_live_nodes_only() -> None:
    table = NodeTable()
    up = [NodeRecord(NodeDescription(f"n{i}", "127.0.0.1:1")) for i in range(5)]
    for record in up:
        table.put(record)
    version = table.version

    table.put(NodeRecord(NodeDescription("n2", "127.0.0.1:1"), state="down"))
    table.discard("n0")
    table.discard("ghost")

    assert sorted(n.node_id for n in table) == ["n1", "n3", "n4"]
    assert table.get("n2") is None and table.get("n3") is not None
    assert table.version > version
    assert {n.node_id for _ in range(50) for n in table.sample(random.Random(), 2)} == {"n1", "n3", "n4"}
    assert len(table.sample(random.Random(), 10)) == 3


def test_a_saved_query_is_written_at_once_not_at_the_next_interval(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    registry = _open(path, interval=60.0)
    try:
        registry.upsert_node(INFO, now=1.0)
        registry.apply_reward("node-a", 0.05, True, lambda f: 0.6)
        registry.save_query(QueryRecord("q1", "What is 2 + 2?", "4", 5.0, {"chunks": []}))
        deadline = time.monotonic() + 5
        while not _on_disk(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [n.fitness for n in _on_disk(path)] == [0.6]  # the reward queued before it came too
        reader = SqliteRegistry(path)
        try:
            assert reader.get_query("q1").answer == "4"
        finally:
            reader.close()
    finally:
        registry.close()
