"""The NodeRegistry contract, run against every backend: SQLite (one file), Redis (one real server), and the
coordinator's write-behind cache in front of a SQLite file.

``registry_factory`` makes a new handle on the same store each time it is called, so tests with two
handles stand for two coordinators sharing one registry. A cached file has one owner: there a new
handle first closes (and so flushes) the old ones, as a restarted coordinator would, and the tests of
concurrent handles do not apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import pytest

from dellm.coordinator.errors import UnknownNodeError, UnknownQueryError
from dellm.coordinator.registry import CachedRegistry, NodeRegistry, QueryRecord, RedisRegistry, SqliteRegistry
from dellm.protos.wire import NodeDescription

INFO = NodeDescription("node-a", "127.0.0.1:50051", name="laptop", model="qwen2.5-0.5b", backend="llama_cpp")


class RegistryFactory(Protocol):
    def __call__(self, *, initial_fitness: float = 0.5) -> NodeRegistry: ...


@pytest.fixture(params=["sqlite", "redis", "cached"])
def registry_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryFactory]:
    """New handles on one store of the parametrized backend; all closed after the test."""
    opened: list[NodeRegistry] = []
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")

        def make(*, initial_fitness: float = 0.5) -> NodeRegistry:
            opened.append(RedisRegistry(url, initial_fitness=initial_fitness))
            return opened[-1]
    elif request.param == "sqlite":
        path = tmp_path / "registry.sqlite3"

        def make(*, initial_fitness: float = 0.5) -> NodeRegistry:
            opened.append(SqliteRegistry(path, initial_fitness=initial_fitness))
            return opened[-1]
    else:
        path = tmp_path / "registry.sqlite3"

        def make(*, initial_fitness: float = 0.5) -> NodeRegistry:
            for old in opened:
                old.close()
            opened.append(CachedRegistry(SqliteRegistry(path, initial_fitness=initial_fitness),
                                         initial_fitness=initial_fitness))
            return opened[-1]
        make.single_owner = True  # type: ignore[attr-defined]

    yield make
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> NodeRegistry:
    return registry_factory()


def _set_fitness(registry: NodeRegistry, node_id: str, value: float) -> None:
    registry.apply_reward(node_id, 0.0, None, lambda _: value)


@pytest.mark.parametrize("initial", [pytest.param(0.5, id="default"), pytest.param(0.3, id="configured")])
def test_new_node_starts_up_with_initial_fitness(registry_factory: RegistryFactory, initial: float) -> None:
    registry = registry_factory(initial_fitness=initial)

    record = registry.upsert_node(INFO, now=123.0)

    assert (record.info, record.fitness, record.state, record.last_seen) == (INFO, initial, "up", 123.0)
    assert (record.latency_ms, record.answers, record.correct, record.failures, record.failure_streak) == (
        None, 0, 0, 0, 0,
    )
    assert registry.get("node-a") == record


@pytest.mark.parametrize(
    "node_ids",
    [
        pytest.param(["node-a", "node-b"], id="plain"),
        pytest.param(["a:b", "a", "a:b:c", "b"], id="separator-in-id"),
        pytest.param(["näde ✓", "東京-1", "x y"], id="unicode-and-space"),
    ],
)
def test_ids_are_kept_apart_and_round_trip(registry: NodeRegistry, node_ids: list[str]) -> None:
    for fitness, node_id in enumerate(node_ids):
        registry.upsert_node(NodeDescription(node_id, "127.0.0.1:1"), now=1.0)
        _set_fitness(registry, node_id, fitness / 10)

    assert [n.node_id for n in registry.list_nodes()] == sorted(node_ids)
    for fitness, node_id in enumerate(node_ids):
        assert (registry.get(node_id).node_id, registry.get(node_id).fitness) == (node_id, fitness / 10)


def test_rejoin_keeps_fitness_and_refreshes_info(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    _set_fitness(registry, "node-a", 0.83)
    registry.record_answer("node-a", 400.0, failed=True, alpha=0.5)
    registry.set_state("node-a", "down", now=2.0)
    moved = NodeDescription("node-a", "10.0.0.7:6000", name="laptop", model="qwen2.5-1.5b")

    record = registry.upsert_node(moved, now=3.0)

    assert (record.fitness, record.state, record.last_seen, record.info) == (0.83, "up", 3.0, moved)
    assert (record.answers, record.failures, record.failure_streak) == (1, 1, 0)  # history kept, streak restarts


def test_second_handle_sees_the_first_ones_figures(registry_factory: RegistryFactory) -> None:
    first = registry_factory()
    first.upsert_node(INFO, now=1.0)
    first.record_answer("node-a", 250.0, failed=False, alpha=0.3)
    first.apply_reward("node-a", 0.1, True, lambda _: 0.77)
    first.save_query(QueryRecord("q1", "What is 2 + 2?", "4", 5.0, {"chunks": []}))

    second = registry_factory(initial_fitness=0.1)  # another coordinator's setting never touches known nodes

    record = second.get("node-a")
    assert (record.fitness, record.latency_ms, record.answers, record.correct) == (0.77, 250.0, 1, 1)
    assert second.get_query("q1").answer == "4"
    assert second.upsert_node(INFO, now=9.0).fitness == 0.77


def test_set_state_and_list_nodes_sorted_by_id(registry: NodeRegistry) -> None:
    for node_id in ("node-c", "node-a", "node-b"):
        registry.upsert_node(NodeDescription(node_id, "127.0.0.1:1"), now=1.0)

    registry.set_state("node-b", "down", now=7.0)

    assert [(n.node_id, n.state) for n in registry.list_nodes()] == [
        ("node-a", "up"),
        ("node-b", "down"),
        ("node-c", "up"),
    ]
    assert registry.get("node-b").last_seen == 7.0


def test_set_state_without_now_keeps_last_seen(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=4.5)

    registry.set_state("node-a", "down")

    assert (registry.get("node-a").state, registry.get("node-a").last_seen) == ("down", 4.5)


def test_list_nodes_of_an_empty_registry(registry: NodeRegistry) -> None:
    assert registry.list_nodes() == []


@pytest.mark.parametrize(
    ("latencies", "alpha", "expected"),
    [
        pytest.param([100.0], 0.5, 100.0, id="first-measurement-taken-as-is"),
        pytest.param([100.0, 200.0], 0.5, 150.0, id="half"),
        pytest.param([100.0, 200.0, 300.0], 0.2, (1 - 0.2) * ((1 - 0.2) * 100 + 0.2 * 200) + 0.2 * 300,
                     id="three-alpha-0.2"),
        pytest.param([100.0, None, 300.0], 1.0, 300.0, id="unmeasured-skipped-alpha-1"),
        pytest.param([None], 0.5, None, id="never-measured"),
        pytest.param([0.1, 0.7], 0.3, (1 - 0.3) * 0.1 + 0.3 * 0.7, id="every-bit-kept"),
    ],
)
def test_latency_moving_average(
    registry: NodeRegistry, latencies: list[float | None], alpha: float, expected: float | None
) -> None:
    registry.upsert_node(INFO, now=1.0)
    started = time.time()
    for latency in latencies:
        record = registry.record_answer("node-a", latency, failed=False, alpha=alpha)

    assert record.latency_ms == expected  # (1 - alpha) * old + alpha * new in every backend: bit for bit
    assert record.answers == len(latencies)
    assert record.last_seen >= started
    assert registry.get("node-a") == record


def test_failed_answer_does_not_move_latency(registry: NodeRegistry) -> None:
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
    registry: NodeRegistry, failed: list[bool], streak: int, failures: int
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
def test_apply_reward_returns_before_and_after(registry: NodeRegistry, correct: bool | None, counted: int) -> None:
    registry.upsert_node(INFO, now=1.0)

    before, after = registry.apply_reward("node-a", 0.1, correct, lambda f: f * 0.9 + 0.1)

    assert (before, after) == (0.5, 0.5 * 0.9 + 0.1)
    record = registry.get("node-a")
    assert (record.fitness, record.correct) == (0.5 * 0.9 + 0.1, counted)


def test_apply_reward_counts_every_correct_answer(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    for correct in (True, None, True, False, True):
        registry.apply_reward("node-a", 0.1, correct, lambda f: f)

    assert registry.get("node-a").correct == 3


def test_apply_reward_writes_nothing_when_update_raises(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)

    def boom(_: float) -> float:
        raise RuntimeError("update failed")

    with pytest.raises(RuntimeError, match="update failed"):
        registry.apply_reward("node-a", 0.1, True, boom)

    record = registry.get("node-a")
    assert (record.fitness, record.correct) == (0.5, 0)
    assert registry.apply_reward("node-a", 0.0, None, lambda f: f) == (0.5, 0.5)  # nothing left locked


THREADS_PER_HANDLE, CALLS_PER_THREAD = 4, 150  # two handles: 8 threads, 1200 calls


def _hammer(handles: list[NodeRegistry], call: Callable[[NodeRegistry, int], object]) -> None:
    """Run call(handle, i) CALLS_PER_THREAD times in THREADS_PER_HANDLE threads on each handle, all at once."""
    threads_count = THREADS_PER_HANDLE * len(handles)
    start = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def work(handle: NodeRegistry) -> None:
        try:
            start.wait()
            for i in range(CALLS_PER_THREAD):
                call(handle, i)
        except BaseException as exc:  # reported below, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(handles[i % len(handles)],)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert not any(t.is_alive() for t in threads)


def require_shared(factory: RegistryFactory) -> None:
    if getattr(factory, "single_owner", False):
        pytest.skip("a cached SQLite file has one owner: no concurrent handles")


def test_concurrent_rewards_from_two_handles_lose_no_update(registry_factory: RegistryFactory) -> None:
    require_shared(registry_factory)
    handles = [registry_factory(), registry_factory()]
    handles[0].upsert_node(INFO, now=1.0)
    initial = handles[1].get("node-a").fitness

    _hammer(handles, lambda reg, i: reg.apply_reward("node-a", 0.0001, i % 2 == 0, lambda f: f + 0.0001))

    total = 2 * THREADS_PER_HANDLE * CALLS_PER_THREAD
    for handle in handles:
        record = handle.get("node-a")
        assert record.fitness == pytest.approx(initial + total * 0.0001, abs=1e-9)  # one lost update is 1e-4
        assert record.correct == total // 2


def test_concurrent_answers_from_two_handles_are_all_counted(registry_factory: RegistryFactory) -> None:
    require_shared(registry_factory)
    handles = [registry_factory(), registry_factory()]
    handles[0].upsert_node(INFO, now=1.0)

    _hammer(handles, lambda reg, i: reg.record_answer("node-a", 100.0, failed=i % 3 == 0, alpha=0.25))

    total = 2 * THREADS_PER_HANDLE * CALLS_PER_THREAD
    for handle in handles:
        record = handle.get("node-a")
        assert (record.answers, record.failures) == (total, total // 3)
        assert record.latency_ms == pytest.approx(100.0)


def test_concurrent_rewards_and_answers_do_not_clobber_each_other(registry_factory: RegistryFactory) -> None:
    require_shared(registry_factory)
    handles = [registry_factory(), registry_factory()]
    handles[0].upsert_node(INFO, now=1.0)

    def reward_or_answer(reg: NodeRegistry, i: int) -> object:
        if i % 2:
            return reg.record_answer("node-a", 50.0, failed=False, alpha=0.5)
        return reg.apply_reward("node-a", 0.001, True, lambda f: f + 0.001)

    _hammer(handles, reward_or_answer)

    half = THREADS_PER_HANDLE * CALLS_PER_THREAD  # of the 2 * THREADS_PER_HANDLE * CALLS_PER_THREAD calls
    record = handles[0].get("node-a")
    assert (record.answers, record.correct) == (half, half)
    assert record.fitness == pytest.approx(0.5 + half * 0.001, abs=1e-9)


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
def test_unknown_node_raises_and_creates_nothing(
    registry: NodeRegistry, call: Callable[[NodeRegistry], object]
) -> None:
    registry.upsert_node(INFO, now=1.0)

    with pytest.raises(UnknownNodeError):
        call(registry)
    assert [n.node_id for n in registry.list_nodes()] == ["node-a"]
    with pytest.raises(UnknownNodeError):
        registry.get("ghost")


def test_unknown_query_raises(registry: NodeRegistry) -> None:
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
def test_save_and_get_query_round_trip(registry_factory: RegistryFactory, detail: dict[str, object]) -> None:
    record = QueryRecord("q-1", "Calculate 10% interest on $1000", "$100", 1_700_000_000.25, detail)

    registry_factory().save_query(record)

    assert registry_factory().get_query("q-1") == record


def test_save_query_replaces_same_id(registry: NodeRegistry) -> None:
    registry.save_query(QueryRecord("q-1", "first", "a", 1.0, {"v": 1}))
    registry.save_query(QueryRecord("q-1", "second", "b", 2.0, {"v": 2}))

    assert registry.get_query("q-1") == QueryRecord("q-1", "second", "b", 2.0, {"v": 2})


def test_rewards_are_kept_per_operation_type(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    registry.apply_reward("node-a", 0.1, True, lambda f: f + 0.1, "MATH_OP")
    registry.apply_reward("node-a", 0.1, True, lambda f: f + 0.1, "MATH_OP")
    registry.apply_reward("node-a", -0.05, False, lambda f: f - 0.2, "SEARCH_OP")
    record = registry.get("node-a")
    assert record.fitness == pytest.approx(0.5)  # +0.1 +0.1 -0.2 overall
    math_stats, search_stats = record.op_stats["MATH_OP"], record.op_stats["SEARCH_OP"]
    assert (math_stats.trials, math_stats.successes) == (2, 2) and math_stats.fitness == pytest.approx(0.7)
    assert (search_stats.trials, search_stats.successes) == (1, 0)
    assert search_stats.fitness == pytest.approx(0.5)  # started from the overall fitness then (0.7), minus 0.2
    assert registry.list_nodes()[0].op_stats == record.op_stats


def test_a_pruned_node_is_forgotten_until_it_returns_with_its_figures(registry: NodeRegistry) -> None:
    registry.upsert_node(INFO, now=1.0)
    registry.record_answer("node-a", 200.0, failed=False, alpha=0.5, now=2.0)
    registry.apply_reward("node-a", 0.05, True, lambda f: 0.77, "MATH_OP")
    registry.set_state("node-a", "gone")
    registry.prune("node-a")
    assert [n.node_id for n in registry.list_nodes()] == []
    with pytest.raises(UnknownNodeError):
        registry.get("node-a")
    with pytest.raises(UnknownNodeError):
        registry.prune("node-a")
    moved = replace(INFO, address="127.0.0.1:50099")
    back = registry.upsert_node(moved, now=9.0)
    again = registry.get("node-a")
    for record in (back, again):
        assert (record.fitness, record.latency_ms, record.answers, record.correct) == (0.77, 200.0, 1, 1)
        assert record.state == "up" and record.info == moved
    assert again.op_stats["MATH_OP"].trials == 1 and again.op_stats["MATH_OP"].fitness == 0.77


def test_credentials_are_kept_by_node_id(registry: NodeRegistry) -> None:
    assert registry.node_credential("node-a") is None
    registry.bind_credential("node-a", "d" * 64)
    assert registry.node_credential("node-a") == "d" * 64
