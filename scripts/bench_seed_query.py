#!/usr/bin/env python3
"""Benchmark: the seed's query end to end on three real-model nodes on this machine.

Starts a coordinator (with the synthesis model) and the demo's three llama.cpp nodes as
processes on loopback, asks the seed's query --runs times, and reports time to first
event, time to first answer token, total time and each stage's share. Results go to
bench-results/seed_query.json.

    python scripts/bench_seed_query.py --runs 5
    python scripts/bench_seed_query.py --cold --runs 5    # a fresh network per run: `make demo`'s case

``--cold`` starts the whole network anew for every run and asks the query once, as `make demo` does
(results: bench-results/seed_query_cold.json; the issue's target for it is 3 s).
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

from dellm.client.api import ClientConfig, DellmClient  # noqa: E402
from dellm.client.demo import DEMO_NODES, QWEN, SEED_QUERY  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import BenchmarkError, node_stream, run_and_report  # noqa: E402


async def one_run(address: str, query: str) -> dict[str, object]:
    started = time.perf_counter()
    first_event = first_answer_token = None
    final = None
    async with DellmClient(address, ClientConfig(ask_timeout_s=300)) as client:
        async for event in client.ask(query):
            now = time.perf_counter() - started
            kind = event.WhichOneof("event")
            first_event = first_event if first_event is not None else now
            if kind == "answer_token" and first_answer_token is None:
                first_answer_token = now
            if kind == "final":
                final = event.final
    total = time.perf_counter() - started
    if final is None or not final.answer.strip():
        raise BenchmarkError("the seed's query ended without an answer")
    return {
        "time_to_first_event_s": first_event,
        "time_to_first_answer_token_s": first_answer_token,
        "total_s": total,
        "stages_ms": {t.stage: t.ms for t in final.timings},
        "synthesis": final.synthesis,
        "answer": final.answer,
        "chunks": [{"chunk": c.text, "answer": c.answer, "unanimous": c.unanimous, "nodes": len(c.node_ids)}
                   for c in final.chunks],
    }


async def one_node_alone(address: str, query: str) -> dict[str, object]:
    """The whole query asked of one node's Generate, no decomposition, voting or synthesis."""
    started = time.perf_counter()
    first = None
    parts: list[str] = []
    async for chunk in node_stream(address, query, 256, timeout=300):
        if chunk.text:
            first = first if first is not None else time.perf_counter() - started
            parts.append(chunk.text)
    if first is None:
        raise BenchmarkError("the node streamed no answer")
    return {"time_to_first_answer_token_s": first, "total_s": time.perf_counter() - started,
            "answer": "".join(parts)}


def run_alone(args: argparse.Namespace) -> dict[str, Any]:
    with LocalCluster() as cluster:
        cluster.start_coordinator(extra=["--canary-interval", "0"])
        (node,) = cluster.start_nodes([NodeSpec("alone", QWEN, threads=2)])
        runs = [asyncio.run(one_node_alone(node.address, args.query)) for _ in range(args.runs)]
    median = {key: statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]
              for key in ("time_to_first_answer_token_s", "total_s")}
    print(f"one node alone, {args.runs} runs, median: first answer token "
          f"{median['time_to_first_answer_token_s']:.2f} s, total {median['total_s']:.2f} s")
    print(f"last answer: {runs[-1]['answer']!r}")
    return {"setup": f"one llama.cpp node ({QWEN}, 2 threads) answering the whole query alone",
            "query": args.query, "runs": runs, "median": median}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--query", default=SEED_QUERY)
    parser.add_argument("--synth-model", default=QWEN, help="synthesis model or 'none'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "seed_query.json")
    parser.add_argument("--cold", action="store_true",
                        help="a fresh network for every run, asked once (the `make demo` case)")
    parser.add_argument("--alone", action="store_true",
                        help="instead: one llama.cpp node answers the whole query alone (the comparison)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.alone:
        return run_and_report(args.out.with_name(args.out.stem + "_alone.json"), "bench_seed_query.py",
                              partial(run_alone, args))
    if args.cold:
        return run_and_report(args.out.with_name(args.out.stem + "_cold.json"), "bench_seed_query.py",
                              partial(run_network, args))
    return run_and_report(args.out, "bench_seed_query.py", partial(run_network, args))


def _network_runs(args: argparse.Namespace, count: int) -> list[dict[str, object]]:
    """``count`` runs of the query on one network started for them."""
    with LocalCluster() as cluster:
        cluster.start_coordinator(synth_model=args.synth_model, extra=["--synth-threads", "2"])
        cluster.start_nodes(DEMO_NODES)
        return [asyncio.run(one_run(cluster.coordinator_address, args.query)) for _ in range(count)]


def run_network(args: argparse.Namespace) -> dict[str, Any]:
    if args.cold:  # each run the first query of a fresh network
        runs = [run for _ in range(args.runs) for run in _network_runs(args, 1)]
    else:
        runs = _network_runs(args, args.runs)

    def median(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs if r[key] is not None)  # type: ignore[arg-type]

    stages = sorted({s for r in runs for s in r["stages_ms"]})  # type: ignore[union-attr]
    total_ms = median("total_s") * 1000
    shares = {s: statistics.median(r["stages_ms"].get(s, 0.0) for r in runs) / total_ms  # type: ignore[union-attr]
              for s in stages}
    report = {
        "setup": f"coordinator + {len(DEMO_NODES)} llama.cpp nodes ("
                 + ", ".join(f"{spec.model} ({spec.threads} thread)" for spec in DEMO_NODES)
                 + f", the demo's) on loopback, synthesis: {args.synth_model} (2 threads)",
        "query": args.query,
        "runs": runs,
        "median": {
            "time_to_first_event_s": median("time_to_first_event_s"),
            "time_to_first_answer_token_s": median("time_to_first_answer_token_s"),
            "total_s": median("total_s"),
            "stage_share": shares,
        },
        "target_total_s": 3.0 if args.cold else 5.0,
        "cold": args.cold,
    }
    m = report["median"]
    print(f"seed query, {args.runs} runs, median: first event {m['time_to_first_event_s'] * 1000:.0f} ms, "
          f"first answer token {m['time_to_first_answer_token_s']:.2f} s, total {m['total_s']:.2f} s "
          f"(target < {report['target_total_s']:g} s{', a fresh network each run' if args.cold else ''})")
    for stage, share in shares.items():
        print(f"  {stage:<18} {share:6.1%}")
    print(f"last answer: {runs[-1]['answer']!r}")
    return report


if __name__ == "__main__":
    sys.exit(main())
