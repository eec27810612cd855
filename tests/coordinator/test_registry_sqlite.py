"""The embedded SQLite registry: persistence, moving averages, counters and atomic rewards."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.registry import QueryRecord, SqliteRegistry, UnknownNodeError, UnknownQueryError
from coordinator.types import NodeDescription

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


@pytest.mark.parametrize("initial", [pytest.param(0.5, id="default"), pytest.param(0.3, id="configured")])
def test_new_node_starts_up_with_initial_fitness(path: Path, initial: float) -> None:
    reg = SqliteRegistry(path, initial_fitness=initial)
    try:
        record = reg.upsert_node(INFO, now=123.0)

        assert (record.info, record.fitness, record.state, record.last_seen) == (INFO, initial, "up", 123.0)
        assert (record.latency_ms, record.answers, record.correct, record.failures, record.failure_streak) == (
            None,
            0,
            0,
            0,
            0,
        )
        assert reg.get("node-a") == record
    finally:
        reg.close()


def test_rejoin_keeps_fitness_and_refreshes_info(registry: SqliteRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    _set_fitness(registry, "node-a", 0.83)
    registry.record_answer("node-a", 400.0, failed=True, alpha=0.5)
    registry.set_state("node-a", "down", now=2.0)
    moved = NodeDescription("node-a", "10.0.0.7:6000", name="laptop", model="qwen2.5-1.5b")

    record = registry.upsert_node(moved, now=3.0)

    assert (record.fitness, record.state, record.last_seen, record.info) == (0.83, "up", 3.0, moved)
    assert (record.failures, record.failure_streak) == (1, 0)  # history kept, the streak starts over


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


@pytest.mark.parametrize(
    ("latencies", "alpha", "expected"),
    [
        pytest.param([100.0], 0.5, 100.0, id="first-measurement-taken-as-is"),
        pytest.param([100.0, 200.0], 0.5, 150.0, id="half"),
        pytest.param([100.0, 200.0, 300.0], 0.2, 0.8 * (0.8 * 100 + 0.2 * 200) + 0.2 * 300, id="three-alpha-0.2"),
        pytest.param([100.0, None, 300.0], 1.0, 300.0, id="unmeasured-skipped-alpha-1"),
        pytest.param([None], 0.5, None, id="never-measured"),
    ],
)
def test_latency_moving_average(
    registry: SqliteRegistry, latencies: list[float | None], alpha: float, expected: float | None
) -> None:
    registry.upsert_node(INFO, now=1.0)
    for latency in latencies:
        record = registry.record_answer("node-a", latency, failed=False, alpha=alpha)

    assert record.latency_ms == pytest.approx(expected)
    assert record.answers == len(latencies)


def test_failed_answer_does_not_move_latency(registry: SqliteRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    registry.record_answer("node-a", 100.0, failed=False, alpha=0.5)

    record = registry.record_answer("node-a", 60_000.0, failed=True, alpha=0.5)

    assert record.latency_ms == 100.0


@pytest.mark.parametrize(
    ("failed", "streak", "failures"),
    [
        pytest.param([], 0, 0, id="none"),
        pytest.param([True], 1, 1, id="one-failure"),
        pytest.param([True, True, True], 3, 3, id="three-in-a-row"),
        pytest.param([True, True, False], 0, 2, id="success-resets"),
        pytest.param([True, False, True, True], 2, 3, id="counts-since-last-success"),
        pytest.param([False, False], 0, 0, id="only-successes"),
    ],
)
def test_failure_streak_counts_consecutive_failures(
    registry: SqliteRegistry, failed: list[bool], streak: int, failures: int
) -> None:
    registry.upsert_node(INFO, now=1.0)
    for flag in failed:
        registry.record_answer("node-a", 100.0, failed=flag, alpha=0.5)

    record = registry.get("node-a")
    assert (record.failure_streak, record.failures, record.answers) == (streak, failures, len(failed))


@pytest.mark.parametrize(
    ("correct", "counted"),
    [pytest.param(True, 1, id="correct"), pytest.param(False, 0, id="wrong"), pytest.param(None, 0, id="unknown")],
)
def test_apply_reward_returns_before_and_after(registry: SqliteRegistry, correct: bool | None, counted: int) -> None:
    registry.upsert_node(INFO, now=1.0)

    before, after = registry.apply_reward("node-a", 0.1, correct, lambda f: f * 0.9 + 0.1)

    assert (before, after) == (0.5, pytest.approx(0.55))
    record = registry.get("node-a")
    assert (record.fitness, record.correct) == (pytest.approx(0.55), counted)


def test_apply_reward_rolls_back_when_update_raises(registry: SqliteRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)

    def boom(_: float) -> float:
        raise RuntimeError("update failed")

    with pytest.raises(RuntimeError, match="update failed"):
        registry.apply_reward("node-a", 0.1, True, boom)

    record = registry.get("node-a")
    assert (record.fitness, record.correct) == (0.5, 0)
    assert registry.apply_reward("node-a", 0.0, None, lambda f: f) == (0.5, 0.5)  # the lock was released


def test_apply_reward_is_atomic_across_threads_and_connections(path: Path) -> None:
    threads_count, calls = 8, 200
    registries = [SqliteRegistry(path), SqliteRegistry(path)]
    try:
        registries[0].upsert_node(INFO, now=1.0)
        initial = registries[1].get("node-a").fitness
        start = threading.Barrier(threads_count)
        errors: list[BaseException] = []

        def work(reg: SqliteRegistry) -> None:
            try:
                start.wait()
                for _ in range(calls):
                    reg.apply_reward("node-a", 0.0001, None, lambda f: f + 0.0001)
            except BaseException as exc:  # reported below, never swallowed
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(registries[i % 2],)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        assert not any(t.is_alive() for t in threads)
        for reg in registries:
            assert reg.get("node-a").fitness == pytest.approx(initial + 0.16, abs=1e-9)
    finally:
        for reg in registries:
            reg.close()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda r: r.get("ghost"), id="get"),
        pytest.param(lambda r: r.set_state("ghost", "down"), id="set_state"),
        pytest.param(lambda r: r.set_state("ghost", "up", now=5.0), id="set_state-with-now"),
        pytest.param(lambda r: r.record_answer("ghost", 10.0, failed=False, alpha=0.5), id="record_answer"),
        pytest.param(lambda r: r.apply_reward("ghost", 0.1, True, lambda f: f), id="apply_reward"),
    ],
)
def test_unknown_node_raises(registry: SqliteRegistry, call: Callable[[SqliteRegistry], object]) -> None:
    registry.upsert_node(INFO, now=1.0)

    with pytest.raises(UnknownNodeError):
        call(registry)
    assert registry.list_nodes()[0].node_id == "node-a"  # nothing was created


def test_unknown_query_raises(registry: SqliteRegistry) -> None:
    with pytest.raises(UnknownQueryError):
        registry.get_query("no-such-query")


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param({}, id="empty"),
        pytest.param(
            {
                "chunks": [
                    {
                        "chunk_id": "c1",
                        "operation": "MATH_OP",
                        "answer": "$100",
                        "agreement": 0.75,
                        "answers": [
                            {"node_id": "node-a", "text": "100", "latency_ms": 812.5, "in_winning_group": True},
                            {"node_id": "node-b", "text": "", "error": None, "in_winning_group": False},
                        ],
                    }
                ],
                "unicode": "€ ✓ 東京",
            },
            id="nested",
        ),
    ],
)
def test_save_and_get_query_round_trip(registry: SqliteRegistry, detail: dict[str, object]) -> None:
    record = QueryRecord("q-1", "Calculate 10% interest on $1000", "$100", 1_700_000_000.25, detail)

    registry.save_query(record)

    assert registry.get_query("q-1") == record


def test_save_query_replaces_same_id(registry: SqliteRegistry) -> None:
    registry.save_query(QueryRecord("q-1", "first", "a", 1.0, {"v": 1}))
    registry.save_query(QueryRecord("q-1", "second", "b", 2.0, {"v": 2}))

    assert registry.get_query("q-1") == QueryRecord("q-1", "second", "b", 2.0, {"v": 2})


def test_set_state_and_list_nodes_sorted_by_id(registry: SqliteRegistry) -> None:
    for node_id in ("node-c", "node-a", "node-b"):
        registry.upsert_node(NodeDescription(node_id, "127.0.0.1:1"), now=1.0)

    registry.set_state("node-b", "down", now=7.0)

    assert [(n.node_id, n.state) for n in registry.list_nodes()] == [
        ("node-a", "up"),
        ("node-b", "down"),
        ("node-c", "up"),
    ]
    assert registry.get("node-b").last_seen == 7.0


def test_in_memory_registry_works() -> None:
    reg = SqliteRegistry(":memory:")
    try:
        reg.upsert_node(INFO, now=1.0)
        assert reg.get("node-a").fitness == 0.5
    finally:
        reg.close()
