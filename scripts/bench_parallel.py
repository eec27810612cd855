#!/usr/bin/env python3
"""Benchmark: k independent chunks on k nodes take the time of one.

For each k, a query of k independent parts ("Find item 1 and find item 2 and ...") goes to a
coordinator with k scripted test-double nodes whose answers each take D seconds (one word after a
D-second delay), redundancy 1. Reports end-to-end time against D (ideal) and k x D (sequential).
Issue 6 target: at most 1.2 x D for every k up to the number of nodes. Results:
bench-results/parallel.json.

    python scripts/bench_parallel.py --ks 1,2,4,8,16 --delay 0.2 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import DellmClient  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import BenchmarkError, positive_ints, run_and_report  # noqa: E402


def query_of(k: int) -> str:
    return " and ".join(f"find item {i}" for i in range(1, k + 1)).capitalize()


async def timed(address: str, query: str) -> tuple[float, int]:
    """Seconds to the final answer, and the number of chunks the plan had."""
    started = time.perf_counter()
    async with DellmClient(address) as client:
        events = [e async for e in client.ask(query)]
    if not events or events[-1].WhichOneof("event") != "final":
        raise BenchmarkError(f"{query!r} ended without a final answer")
    return time.perf_counter() - started, len(events[0].plan.chunks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=positive_ints, default=[1, 2, 4, 8, 16],
                        help="numbers of independent chunks, comma-separated (default 1,2,4,8,16)")
    parser.add_argument("--delay", type=float, default=0.2, help="D: seconds each answer takes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=None, help="default: the largest k")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "parallel.json")
    args = parser.parse_args()
    ks = args.ks
    nodes = args.nodes or max(ks)
    if args.delay <= 0 or args.rounds < 1:
        parser.error(f"--delay must be positive (got {args.delay}) and --rounds at least 1 (got {args.rounds})")
    if max(ks) > nodes:
        parser.error(f"k={max(ks)} is larger than the {nodes} nodes: k chunks cannot run on k distinct nodes")
    return run_and_report(args.out, "bench_parallel.py", partial(measure, ks, args.delay, args.rounds, nodes))


def measure(ks: list[int], delay: float, rounds: int, nodes: int) -> dict[str, Any]:
    results = []
    with LocalCluster() as cluster:
        script = cluster.write_script("slow", f'model = "scripted-slow"\n\n[default]\nreply = "done"\n'
                                              f'delay = {delay}\n')
        cluster.start_coordinator(extra=["--canary-interval", "0", "--redundancy", "1", "--max-chunks",
                                         str(max(ks)), "--exploration", "none"])
        cluster.start_nodes([NodeSpec(f"slow-{i}", backend="scripted", script=script) for i in range(nodes)])
        asyncio.run(timed(cluster.coordinator_address, query_of(1)))  # warm up
        for k in ks:
            runs = [asyncio.run(timed(cluster.coordinator_address, query_of(k))) for _ in range(rounds)]
            if any(chunks != k for _, chunks in runs):
                raise BenchmarkError(f"the plan did not have {k} chunks: {[c for _, c in runs]}")
            median = statistics.median(t for t, _ in runs)
            results.append({"k": k, "median_s": median, "ratio_to_D": median / delay, "sequential_s": k * delay,
                            "runs_s": [t for t, _ in runs]})
            print(f"k={k:2d}: {median:.3f} s = {median / delay:.2f} x D (sequential would be "
                  f"{k * delay:.1f} s; target <= 1.2 x D)", flush=True)
    return {"delay_s": delay, "nodes": nodes, "results": results, "target_ratio_to_D": 1.2}


if __name__ == "__main__":
    sys.exit(main())
