#!/usr/bin/env python3
"""Benchmark: tokens reach the client at the pace the node produces them.

One llama.cpp node (qwen2.5-coder-0.5b-instruct). The same prompt is generated (a) straight from
the node's Generate stream and (b) through the coordinator as a one-chunk query, alternating, and
the token rate (tokens after the first / time from first to last) is measured at each receiver.
Issue 6: a node at ~40 tokens/s must not be slowed by the coordinator. Results:
bench-results/token_pace.json.

    python scripts/bench_token_pace.py --rounds 5
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
from scripts.bench_report import BenchmarkError, node_stream, run_and_report  # noqa: E402

QUERY = "Tell me about the history of the city of Paris in detail"
MAX_TOKENS = 160


def rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


async def at_node(address: str) -> float:
    stamps: list[float] = []
    async for chunk in node_stream(address, f"{QUERY}\nAnswer concisely.", MAX_TOKENS, timeout=120):
        if chunk.text:
            stamps.extend([time.perf_counter()] * max(1, len(chunk.logprobs)))
    return rate(stamps)


async def at_client(address: str) -> float:
    """Tokens per second as the client sees them (a chunk_token event may carry tokens that waited together)."""
    stamps: list[float] = []
    async with DellmClient(address) as client:
        async for event in client.ask(QUERY):
            if event.WhichOneof("event") == "chunk_token":
                stamps.extend([time.perf_counter()] * max(1, event.chunk_token.tokens))
            final = event
    if final.WhichOneof("event") != "final":
        raise BenchmarkError("the query ended without a final answer")
    return rate(stamps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "token_pace.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return run_and_report(args.out, "bench_token_pace.py", partial(measure, args.rounds))


def measure(rounds: int) -> dict[str, Any]:
    node_rates, client_rates = [], []
    with LocalCluster() as cluster:
        cluster.start_coordinator(extra=["--canary-interval", "0", "--redundancy-threshold", "2",
                                         "--max-tokens", str(MAX_TOKENS)])
        (node,) = cluster.start_nodes([NodeSpec("pace", "qwen2.5-coder-0.5b-instruct", threads=2)])
        asyncio.run(at_node(node.address))  # warm up
        for _ in range(rounds):
            node_rates.append(asyncio.run(at_node(node.address)))
            client_rates.append(asyncio.run(at_client(cluster.coordinator_address)))
    figures = {
        "tokens_per_s_at_node": node_rates, "tokens_per_s_at_client": client_rates,
        "median_at_node": statistics.median(node_rates), "median_at_client": statistics.median(client_rates),
    }
    print(f"tokens/s straight from the node: median {figures['median_at_node']:.1f} "
          f"({', '.join(f'{r:.1f}' for r in node_rates)})")
    print(f"tokens/s at the client, through the coordinator: median {figures['median_at_client']:.1f} "
          f"({', '.join(f'{r:.1f}' for r in client_rates)})")
    return figures


if __name__ == "__main__":
    sys.exit(main())
