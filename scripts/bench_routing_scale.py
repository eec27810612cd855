#!/usr/bin/env python3
"""Benchmark: the cost of one routing decision, and of a node entry, as the registry grows.

A decision as the coordinator makes it: the candidates from the shortlist over the in-memory node
table (``Shortlist.candidates``), then the seed's score over them (``route_chunk``), for each
exploration mode, with N nodes carrying per-operation stats. Also timed: the shortlist's ranking
rebuild (at most every ``shortlist_refresh_s`` while the table changes), scoring every node (what a
decision cost before the shortlist), and the SQLite read the coordinator now does once, at start.
Memory per entry (record plus table index) is measured with tracemalloc. With --redis, a shared
Redis registry too: a full read of every node against a refresh from its change log (what a
coordinator on Redis does per look). Issue 6 target: p50 under 100 microseconds at 10000 nodes.
Results: bench-results/routing_scale.json.

    python scripts/bench_routing_scale.py --sizes 10,100,1000,10000
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.coordinator.config import RouteConfig  # noqa: E402
from dellm.coordinator.pipeline.operations import Operation  # noqa: E402
from dellm.coordinator.pipeline.route import Shortlist, route_chunk  # noqa: E402
from dellm.coordinator.registry import NodeTable, RedisRegistry, SqliteRegistry  # noqa: E402
from dellm.coordinator.types import Chunk, NodeRecord, OpStats  # noqa: E402
from dellm.protos.wire import NodeDescription  # noqa: E402
from scripts.bench_report import positive_ints, run_and_report  # noqa: E402
from tests.redis_server import RedisServerProcess  # noqa: E402

CHUNK = Chunk("c1", Operation.MATH_OP, "What is 12 * 7?", 6, 0.55)


def make_nodes(n: int, rng: random.Random) -> list[NodeRecord]:
    return [
        NodeRecord(NodeDescription(f"{i:032x}", f"10.0.{i // 250}.{i % 250}:50051", name=f"n{i}", model="m",
                                   backend="llama_cpp"),
                   fitness=rng.random(), latency_ms=rng.uniform(100, 3000),
                   op_stats={"MATH_OP": OpStats(rng.random(), trials, rng.randint(0, trials))})
        for i, trials in enumerate(rng.randint(0, 50) for _ in range(n))
    ]


def time_decisions(table: NodeTable, exploration: str, repeats: int) -> dict[str, float]:
    """p50 and p99 of one decision (shortlist + score) with the ranking warm, in microseconds."""
    config = RouteConfig(exploration=exploration)
    shortlist = Shortlist(config)
    rng = random.Random(0)
    in_flight: dict[str, int] = {}
    samples = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        candidates = shortlist.candidates(table, CHUNK.operation.value, in_flight, (), rng)
        route_chunk(CHUNK, candidates, in_flight, config, rng=rng)
        samples.append((time.perf_counter() - started) * 1e6)
    samples = sorted(samples[1:])  # the first decision builds the ranking: timed on its own
    return {"p50": statistics.median(samples), "p99": percentile(samples, 99)}


def rebuild(config: RouteConfig, table: NodeTable) -> None:
    """A first decision with a fresh shortlist: the ranking is built from every node."""
    Shortlist(config).candidates(table, CHUNK.operation.value, {})


def time_call(call: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``call``."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_ints, default=[10, 100, 1000, 10000],
                        help="network sizes, comma-separated (default 10,100,1000,10000)")
    parser.add_argument("--redis", action="store_true",
                        help="also time a shared Redis registry (a throwaway redis-server on loopback)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "routing_scale.json")
    args = parser.parse_args()
    sizes = args.sizes
    if args.redis and not shutil.which("redis-server"):
        parser.error("--redis needs redis-server (apt-get install redis-server)")
    return run_and_report(args.out, "bench_routing_scale.py", partial(measure_with_redis, sizes, args.redis))


def measure_with_redis(sizes: list[int], redis: bool) -> dict[str, Any]:
    if not redis:
        return measure(sizes, None)
    server = RedisServerProcess("redis-server")
    try:
        return measure(sizes, server.url)
    finally:
        server.stop()


def measure(sizes: list[int], redis_url: str | None) -> dict[str, Any]:
    rng = random.Random(1)
    rows = []
    for n in sizes:
        tracemalloc.start()
        nodes = make_nodes(n, rng)
        table = NodeTable(nodes)
        per_entry = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
        row: dict[str, float] = {"nodes": n, "bytes_per_entry": per_entry}
        for mode in ("none", "ucb", "thompson"):
            timed = time_decisions(table, mode, 2000)
            row[f"route_p50_us_{mode}"], row[f"route_p99_us_{mode}"] = timed["p50"], timed["p99"]
        config = RouteConfig(exploration="thompson")
        repeats = max(3, min(200, 20_000 // n))
        row["rebuild_ms"] = time_call(partial(rebuild, config, table), repeats)
        row["score_all_us_thompson"] = 1000 * time_call(
            partial(route_chunk, CHUNK, nodes, {}, config, rng=random.Random(0)), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            registry = SqliteRegistry(Path(tmp) / "r.sqlite3")
            with registry.batch():
                for node in nodes:
                    registry.upsert_node(node.info, now=1.0)
            row["registry_load_ms"] = time_call(registry.list_nodes, 3)
            registry.close()
        if redis_url:
            row.update(redis_reads(redis_url, nodes))
        rows.append(row)
        print(f"{n:6d} nodes: decision p50 {row['route_p50_us_none']:.0f} / {row['route_p50_us_ucb']:.0f} / "
              f"{row['route_p50_us_thompson']:.0f} us (none / ucb / thompson), p99 {row['route_p99_us_thompson']:.0f}"
              f" us (thompson); ranking rebuild {row['rebuild_ms']:.2f} ms; scoring every node "
              f"{row['score_all_us_thompson']:.0f} us; SQLite load at start {row['registry_load_ms']:.1f} ms; "
              f"{per_entry:.0f} bytes per entry", flush=True)
        if redis_url:
            print(f"        Redis: full read {row['redis_full_read_ms']:.1f} ms; change-log refresh with "
                  f"{REDIS_CHANGED} nodes changed {row['redis_refresh_ms']:.2f} ms", flush=True)
    return {"rows": rows, "target_route_p50_us_at_10000": 100, "redis_changed_per_refresh": REDIS_CHANGED}


REDIS_CHANGED = 10  # nodes written between two looks at the change log (a busy 0.1 s)


def redis_reads(url: str, nodes: list[NodeRecord]) -> dict[str, float]:
    """A shared registry's cost per routing table: a full read against a refresh from the change log."""
    registry = RedisRegistry(url, prefix=f"bench{len(nodes)}")
    try:
        for node in nodes:
            registry.upsert_node(node.info, now=1.0)
        full = time_call(registry.list_nodes, 3)
        samples = []
        for round_ in range(20):
            version, _ = registry.changes_since(0)
            for node in nodes[round_:round_ + REDIS_CHANGED]:
                registry.record_answer(node.node_id, 100.0, failed=False, alpha=0.3)
            samples.append(time_call(partial(registry.changes_since, version), 1))
        return {"redis_full_read_ms": full, "redis_refresh_ms": statistics.median(samples)}
    finally:
        registry.close()


if __name__ == "__main__":
    sys.exit(main())
