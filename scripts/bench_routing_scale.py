#!/usr/bin/env python3
"""Benchmark: the cost of one routing decision, and of a node entry, as the registry grows.

Times route_chunk (stage 2, pure) over N NodeRecords with per-operation stats, for the exploration
modes, and the registry read that precedes it in the coordinator (SqliteRegistry.list_nodes).
Memory per entry is measured with tracemalloc. Issue 6 target: p50 under 100 microseconds at 10000
nodes. Results: bench-results/routing_scale.json.

    python scripts/bench_routing_scale.py --sizes 10,100,1000,10000
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.config import RouteConfig  # noqa: E402
from coordinator.pipeline.route import route_chunk  # noqa: E402
from coordinator.registry import SqliteRegistry  # noqa: E402
from coordinator.types import Chunk, NodeDescription, NodeRecord, Operation, OpStats  # noqa: E402
from scripts.bench_report import machine, write_report  # noqa: E402

CHUNK = Chunk("c1", Operation.MATH_OP, "What is 12 * 7?", 6, 0.55)


def make_nodes(n: int, rng: random.Random) -> list[NodeRecord]:
    return [
        NodeRecord(NodeDescription(f"{i:032x}", f"10.0.{i // 250}.{i % 250}:50051", name=f"n{i}", model="m",
                                   backend="llama_cpp"),
                   fitness=rng.random(), latency_ms=rng.uniform(100, 3000),
                   op_stats={"MATH_OP": OpStats(rng.random(), trials, rng.randint(0, trials))})
        for i, trials in enumerate(rng.randint(0, 50) for _ in range(n))
    ]


def time_route(nodes: list[NodeRecord], exploration: str, repeats: int) -> float:
    config = RouteConfig(exploration=exploration)
    rng = random.Random(0)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        route_chunk(CHUNK, nodes, {}, config, rng=rng)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "routing_scale.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if min(sizes) < 1:
        parser.error("sizes must be positive")
    rng = random.Random(1)
    rows = []
    for n in sizes:
        tracemalloc.start()
        nodes = make_nodes(n, rng)
        per_entry = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
        repeats = max(20, min(2000, 200_000 // n))
        row = {"nodes": n, "bytes_per_entry": per_entry,
               **{f"route_p50_us_{mode}": time_route(nodes, mode, repeats) for mode in ("none", "ucb", "thompson")}}
        with tempfile.TemporaryDirectory() as tmp:
            registry = SqliteRegistry(Path(tmp) / "r.sqlite3")
            for node in nodes:
                registry.upsert_node(node.info, now=1.0)
            started = time.perf_counter()
            for _ in range(5):
                registry.list_nodes()
            row["registry_read_ms"] = (time.perf_counter() - started) * 1000 / 5
            registry.close()
        rows.append(row)
        print(f"{n:6d} nodes: route p50 {row['route_p50_us_none']:.0f} us (none) / {row['route_p50_us_ucb']:.0f} us"
              f" (ucb) / {row['route_p50_us_thompson']:.0f} us (thompson); registry read "
              f"{row['registry_read_ms']:.1f} ms; {per_entry:.0f} bytes per entry", flush=True)
    report = {"machine": machine(),
              "command": " ".join(["scripts/bench_routing_scale.py", *sys.argv[1:]]), "rows": rows,
              "target_route_p50_us_at_10000": 100}
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
