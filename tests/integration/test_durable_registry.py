"""Registry writes survive a store that fails for a while: a SQLite file locked by another process.

Before: when a write-behind flush failed, its batch was dropped. With the file locked for 25 s, 40 of 45
finished query records never reached disk, fitness on disk went back from 0.960 to 0.732, and the
coordinator still exited 0.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dellm.client.api import DellmClient
from dellm.coordinator.config import CoordinatorConfig
from dellm.coordinator.core import Coordinator
from dellm.coordinator.grpc_server import start_coordinator
from dellm.coordinator.pipeline.synthesize import TemplateSynthesizer
from dellm.coordinator.registry import CachedRegistry, QueryRecord, RegistryWriteError, SqliteRegistry, open_registry
from dellm.protos.wire import NodeDescription
from tests.conftest import Cluster, script

RIGHT = [{"pattern": ".", "reply": "A credit union pays the most interest.", "delay": 0.01}]
LOCK_S = 25.0

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


@pytest.fixture
async def cached_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A coordinator on the registry the CLI opens (the write-behind cache over a SQLite file)."""
    c = Cluster(tmp_path, CoordinatorConfig(canary_interval_s=0))
    registry = open_registry(str(tmp_path / "registry.sqlite3"))
    c.coordinator = await start_coordinator(Coordinator(c.config, registry, TemplateSynthesizer()), "127.0.0.1:0")
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.slow
async def test_a_file_locked_for_25_s_loses_nothing(cached_cluster: Cluster, tmp_path: Path) -> None:
    c = cached_cluster
    assert c.coordinator is not None
    registry = c.coordinator.coordinator.registry
    assert isinstance(registry, CachedRegistry)
    for name in ("a", "b"):
        await c.add_node(name, script(RIGHT))
    path = tmp_path / "registry.sqlite3"
    locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, str(path), str(LOCK_S),
                                                  stdout=asyncio.subprocess.PIPE)
    assert locker.stdout is not None
    assert (await asyncio.wait_for(locker.stdout.readline(), 10)).strip() == b"locked"

    asked: list[str] = []
    async with DellmClient(c.address) as client:
        for i in range(45):  # the 45 queries, each judged by its asker
            events = [e async for e in client.ask(f"Find the best savings accounts number {i}")]
            final = events[-1].final
            asked.append(final.query_id)
            await client.feedback(final.query_id, True, feedback_token=final.feedback_token)
    assert locker.returncode is None, "the lock ended before the queries did: the test proves nothing"
    assert registry.failed_flushes > 0 and registry.unwritten > 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as reader:  # WAL: readers pass the writer's lock
        on_disk_during = reader.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    assert on_disk_during < len(asked)

    assert await asyncio.wait_for(locker.wait(), LOCK_S + 10) == 0
    await c.wait_for(lambda: registry.unwritten == 0, timeout=15)
    in_memory = {n.node_id: n for n in registry.list_nodes()}
    await c.close()  # closes the registry: nothing left to write, no error

    reopened = SqliteRegistry(path)
    try:
        for query_id in asked:
            assert reopened.get_query(query_id).detail["user_verdicts"]
        for node_id, record in in_memory.items():
            on_disk = reopened.get(node_id)
            assert on_disk.fitness == pytest.approx(record.fitness) and on_disk.answers == record.answers
    finally:
        reopened.close()


def test_updates_still_unwritten_at_close_raise_and_are_counted(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "r.sqlite3"
    registry = CachedRegistry(SqliteRegistry(path, busy_timeout_s=0.05), flush_interval_s=0.05, retry_min_s=0.05,
                              retry_max_s=0.2, close_retry_s=0.5, max_pending=5, name=str(path))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.ERROR):
            for i in range(4):
                registry.upsert_node(NodeDescription(f"n{i}", "127.0.0.1:1"), now=1.0)
                registry.save_query(QueryRecord(f"q{i}", "q", "a", 1.0, {}))
            with pytest.raises(RegistryWriteError, match=r"8 registry updates .* could not be written to "):
                registry.close()
        assert registry.failed_flushes >= 2 and registry.dropped == 3  # 8 updates, 5 held at most
        assert "could not be written" in caplog.text and "3 dropped past the bound of 5" in caplog.text
        assert registry.get_query("q3").answer == "a"  # memory stayed right throughout
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.slow
def test_the_coordinator_exits_non_zero_when_updates_stay_unwritten(tmp_path: Path) -> None:
    """A real dellm-coordinator: a node joins while the registry file is locked, SIGTERM, and the lock
    outlasts the shutdown's retries: exit 1, and the last stderr line says what was not written."""
    import signal
    import subprocess

    from dellm.client.local_cluster import LocalCluster, NodeSpec
    from tests.conftest import FIXTURES

    with LocalCluster(tmp_path) as local:
        local.start_coordinator(extra=["--discovery", "none", "--canary-interval", "0"])
        holder = sqlite3.connect(tmp_path / "registry.sqlite3", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            local.start_nodes([NodeSpec("n1", backend="scripted", script=FIXTURES / "good.toml")])
            coordinator = local.node("coordinator").process
            coordinator.send_signal(signal.SIGTERM)
            try:
                code = coordinator.wait(timeout=40)
            except subprocess.TimeoutExpired:
                coordinator.kill()
                raise
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        log = local.node("coordinator").log_tail(5)
    assert code == 1, log
    assert "could not be written to" in log and "registry updates" in log
