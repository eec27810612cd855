"""What only the Redis registry does: shared by live coordinators, key layout, TTLs, outages, contention."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dellm.coordinator.errors import RegistryUnavailableError
from dellm.coordinator.registry import CachedRegistry, QueryRecord, RedisRegistry, SqliteRegistry, open_registry
from dellm.coordinator.registry import redis as redis_registry
from dellm.coordinator.registry.redis import RewardContentionError, redact_url
from dellm.protos.wire import NodeDescription
from tests.redis_server import RedisServerProcess, free_port

INFO = NodeDescription("node-a", "127.0.0.1:50051", name="laptop", model="qwen2.5-0.5b")


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's database, to look at the keys themselves."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def test_restart_keeps_figures_and_does_not_mark_live_nodes_down(redis_url: str) -> None:
    first = RedisRegistry(redis_url)
    first.upsert_node(INFO, now=1.0)
    first.upsert_node(NodeDescription("node-b", "127.0.0.1:50052"), now=1.0)
    first.set_state("node-b", "down", now=2.0)
    first.record_answer("node-a", 250.0, failed=False, alpha=0.3)
    first.apply_reward("node-a", 0.1, True, lambda _: 0.77)
    first.save_query(QueryRecord("q1", "What is 2 + 2?", "4", 5.0, {"chunks": []}))
    first.close()

    second = RedisRegistry(redis_url, initial_fitness=0.1)
    try:
        record = second.get("node-a")
        assert (record.fitness, record.latency_ms, record.answers, record.correct) == (0.77, 250.0, 1, 1)
        assert [(n.node_id, n.state) for n in second.list_nodes()] == [("node-a", "up"), ("node-b", "down")]
        assert second.get_query("q1").answer == "4"
    finally:
        second.close()


def test_node_and_query_key_layout(redis_url: str, raw: redis.Redis) -> None:
    registry = RedisRegistry(redis_url, prefix="team")
    try:
        registry.upsert_node(INFO, now=3.0)
        registry.save_query(QueryRecord("q1", "q", "a", 5.0, {}))

        assert raw.smembers("team:nodes") == {"node-a"}
        fields = raw.hgetall("team:node:node-a")
        assert set(fields) == {"info", "fitness", "state", "last_seen", "answers", "correct", "failures",
                               "failure_streak"}  # latency_ms absent until measured
        assert (fields["fitness"], fields["state"], fields["answers"]) == ("0.5", "up", "0")
        registry.record_answer("node-a", 120.5, failed=False, alpha=0.5)
        assert raw.hget("team:node:node-a", "latency_ms") == "120.5"
        assert 30 * 24 * 3600 - 60 < raw.ttl("team:query:q1") <= 30 * 24 * 3600
    finally:
        registry.close()


def test_prefixes_keep_registries_apart(redis_url: str) -> None:
    ours, theirs = RedisRegistry(redis_url, prefix="ours"), RedisRegistry(redis_url, prefix="theirs")
    try:
        ours.upsert_node(INFO, now=1.0)

        assert theirs.list_nodes() == []
        assert [n.node_id for n in ours.list_nodes()] == ["node-a"]
    finally:
        ours.close()
        theirs.close()


def test_reward_recomputes_from_the_fresh_value_after_a_concurrent_write(redis_url: str) -> None:
    ours, theirs = RedisRegistry(redis_url), RedisRegistry(redis_url)
    try:
        ours.upsert_node(INFO, now=1.0)
        seen: list[float] = []

        def update(fitness: float) -> float:
            seen.append(fitness)
            if len(seen) == 1:  # another coordinator writes between our read and our EXEC
                theirs.apply_reward("node-a", 0.0, None, lambda _: 0.9)
            return fitness + 0.05

        assert ours.apply_reward("node-a", 0.05, True, update) == (0.9, 0.9 + 0.05)
        assert seen == [0.5, 0.9]
        assert (ours.get("node-a").fitness, ours.get("node-a").correct) == (0.9 + 0.05, 1)
    finally:
        ours.close()
        theirs.close()


def test_reward_gives_up_with_a_clear_error_when_always_overtaken(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_registry, "MAX_REWARD_ATTEMPTS", 3)
    ours, theirs = RedisRegistry(redis_url), RedisRegistry(redis_url)
    try:
        ours.upsert_node(INFO, now=1.0)

        def update(fitness: float) -> float:
            theirs.record_answer("node-a", 10.0, failed=False, alpha=0.5)  # touches the watched node every time
            return fitness + 0.1

        with pytest.raises(RewardContentionError, match=r"node-a.*3 attempts"):
            ours.apply_reward("node-a", 0.1, True, update)
        record = ours.get("node-a")
        assert (record.fitness, record.correct, record.answers) == (0.5, 0, 3)
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", id="plain"),
        pytest.param("redis://:s3cret@db.local:6380/2", "redis://:***@db.local:6380/2", id="password"),
        pytest.param("rediss://alice:s3cret@db.local/0", "rediss://alice:***@db.local/0", id="user-and-password"),
        pytest.param("redis://alice@db.local/0", "redis://alice@db.local/0", id="user-only"),
        pytest.param("redis://db.local/0?password=s3cret", "redis://db.local/0", id="password-in-query"),
    ],
)
def test_redact_url_hides_passwords(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_unreachable_server_fails_fast_without_leaking_the_password() -> None:
    port = free_port()
    started = time.monotonic()

    with pytest.raises(RegistryUnavailableError) as caught:
        RedisRegistry(f"redis://:s3cret@127.0.0.1:{port}/0")

    assert time.monotonic() - started < 2.0
    assert f"redis://:***@127.0.0.1:{port}/0" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_server_going_away_raises_registry_unavailable(private_redis_server: RedisServerProcess) -> None:
    registry = RedisRegistry(private_redis_server.url)
    try:
        registry.upsert_node(INFO, now=1.0)
        private_redis_server.stop()

        for call in (lambda: registry.get("node-a"), lambda: registry.list_nodes(),
                     lambda: registry.record_answer("node-a", 1.0, failed=False, alpha=0.5),
                     lambda: registry.apply_reward("node-a", 0.1, True, lambda f: f)):
            with pytest.raises(RegistryUnavailableError, match=re.escape(private_redis_server.url)):
                call()
    finally:
        registry.close()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_open_registry_picks_redis_for_redis_urls(scheme: str) -> None:
    # Nothing listens there: the dispatch shows in which backend tried to connect.
    with pytest.raises(RegistryUnavailableError, match=re.escape(f"{scheme}://127.0.0.1")):
        open_registry(f"{scheme}://127.0.0.1:{free_port()}/0")


def test_open_registry_returns_a_working_redis_registry(redis_url: str) -> None:
    registry = open_registry(redis_url, initial_fitness=0.4)
    try:
        assert isinstance(registry, RedisRegistry)
        assert registry.upsert_node(INFO, now=1.0).fitness == 0.4
    finally:
        registry.close()


@pytest.mark.parametrize("name", ["registry.sqlite3", "nested/deeper/registry.sqlite3"])
def test_open_registry_makes_a_cached_sqlite_file_and_its_folders(tmp_path: Path, name: str) -> None:
    registry = open_registry(str(tmp_path / name), initial_fitness=0.4)
    try:
        assert isinstance(registry, CachedRegistry)
        assert registry.upsert_node(INFO, now=1.0).fitness == 0.4
        assert (tmp_path / name).is_file()
    finally:
        registry.close()
    reopened = SqliteRegistry(tmp_path / name)  # the cache wrote the node through to the file on close
    try:
        assert reopened.get(INFO.node_id).fitness == 0.4
    finally:
        reopened.close()


def test_the_routing_table_follows_other_coordinators_through_the_change_log(redis_url: str) -> None:
    mine, other = RedisRegistry(redis_url), RedisRegistry(redis_url)
    try:
        mine.table_refresh_s = other.table_refresh_s = 0.0  # look at the log on every call
        other.upsert_node(NodeDescription("a", "127.0.0.1:1"), now=1.0)
        other.upsert_node(NodeDescription("b", "127.0.0.1:2"), now=1.0)
        assert sorted(n.node_id for n in mine.table()) == ["a", "b"]  # the first look reads everything

        other.record_answer("a", 250.0, failed=False, alpha=0.3)
        other.apply_reward("a", 0.05, True, lambda _: 0.8, "MATH_OP")
        other.set_state("b", "down")
        other.upsert_node(NodeDescription("c", "127.0.0.1:3"), now=2.0)

        table = mine.table()
        assert sorted(n.node_id for n in table) == ["a", "c"]
        a = table.get("a")
        assert a is not None and (a.latency_ms, a.fitness, a.op_stats["MATH_OP"].trials) == (250.0, 0.8, 1)
        _, changed = mine.changes_since(mine._table_version)
        assert changed == []  # nothing new: the next look reads no node
    finally:
        mine.close()
        other.close()


def test_a_node_this_coordinator_marks_down_leaves_its_table_at_once(redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        registry.upsert_node(NodeDescription("a", "127.0.0.1:1"), now=1.0)
        registry.upsert_node(NodeDescription("b", "127.0.0.1:2"), now=1.0)
        registry.table_refresh_s = 3600.0  # no look at the log during the test
        assert len(registry.table()) == 2

        registry.set_state("a", "down")
        registry.record_answer("b", 100.0, failed=False, alpha=0.5)

        table = registry.table()
        assert [n.node_id for n in table] == ["b"]
        assert table.get("b").latency_ms == 100.0  # type: ignore[union-attr]
    finally:
        registry.close()


def test_every_write_is_logged_once_with_a_rising_version(redis_url: str) -> None:
    registry = RedisRegistry(redis_url)
    try:
        start, _ = registry.changes_since(0)
        registry.upsert_node(NodeDescription("a", "127.0.0.1:1"), now=1.0)
        after_upsert, changed = registry.changes_since(start)
        registry.record_answer("a", 10.0, failed=False, alpha=0.5)
        registry.apply_reward("a", 0.05, True, lambda f: f + 0.05)
        registry.set_state("a", "up", now=3.0)
        latest, changed_again = registry.changes_since(after_upsert)
        assert [n.node_id for n in changed] == ["a"] and [n.node_id for n in changed_again] == ["a"]
        assert latest == after_upsert + 3  # one version per write
    finally:
        registry.close()
