#!/usr/bin/env python3
"""Benchmark: does routing learn? Accuracy and fitness over many queries on a mixed network.

Every query is "What is A op B?": the coordinator checks each answer exactly, rewards the node,
and routes the next query by score = 0.7 x latency + 0.3 x (1 - fitness) with exploration. With
redundancy 1 the answer's correctness depends only on routing, so accuracy over the last 100
queries against the first 100 measures what routing learned.

  --network scripted   16 test-double nodes of set accuracy: 3 good (0.9-0.95), 8 fair (0.4-0.7),
                       3 poor (0.1-0.3) and 2 fast liars (0.0); a 0.97 newcomer joins at query 400;
                       1000 queries by default
  --network real       llama.cpp nodes on the four shipped models, 200 queries by default

Results: bench-results/fitness_<network>.json and .png (accuracy and each node's fitness over time).

    python scripts/bench_fitness_growth.py --network scripted --queries 1000
    python scripts/bench_fitness_growth.py --network real --queries 200
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import ClientConfig, DellmClient  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from dellm.coordinator.pipeline.answers import exact_answer, final_number  # noqa: E402
from scripts.bench_report import command_line, machine, write_report  # noqa: E402

# name: (accuracy, seconds per word). The liar is the fastest: the seed's score (latency weighs 0.7)
# prefers it until its fitness says otherwise.
SCRIPTED = {
    **{f"good-{i}": (acc, 0.01) for i, acc in enumerate((0.95, 0.92, 0.9))},
    **{f"fair-{i}": (acc, 0.01) for i, acc in enumerate((0.7, 0.65, 0.6, 0.55, 0.5, 0.5, 0.45, 0.4))},
    **{f"poor-{i}": (acc, 0.01) for i, acc in enumerate((0.3, 0.2, 0.1))},
    **{f"liar-{i}": (0.0, 0.002) for i in range(2)},
}
NEWCOMER = ("newcomer", (0.97, 0.01), 400)  # name, (accuracy, delay), joins before this query
REAL = {"qwen-1.5b": "qwen2.5-coder-1.5b-instruct", "qwen-0.5b": "qwen2.5-coder-0.5b-instruct",
        "gemma-270m": "gemma-3-270m", "smollm-135m": "smollm2-135m-instruct"}


def make_queries(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for _ in range(count):
        op = rng.choice(["+", "-", "*"])
        a, b = (rng.randint(10, 99), rng.randint(2, 19)) if op == "*" else (rng.randint(10, 999), rng.randint(10, 999))
        queries.append(f"What is {a} {op} {b}?")
    return queries


def scripted_spec(cluster: LocalCluster, name: str, behaviour: tuple[float, float], seed: int) -> NodeSpec:
    accuracy, delay = behaviour
    script = cluster.write_script(name, f'model = "scripted-{name}"\n\n[arithmetic]\naccuracy = {accuracy}\n'
                                        f'seed = {seed}\ndelay = {delay}\n\n[default]\nreply = "I do not know."\n')
    return NodeSpec(name, backend="scripted", script=script)


def weight_pair(text: str) -> tuple[float, float]:
    """An argparse type: "0.3,0.7" as (0.3, 0.7)."""
    try:
        latency, fitness = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers, latency,fitness; got {text!r}") from None
    return latency, fitness


async def ask(address: str, query: str) -> dict[str, object]:
    async with DellmClient(address, ClientConfig(ask_timeout_s=120)) as client:
        final = None
        async for event in client.ask(query):
            if event.WhichOneof("event") == "final":
                final = event.final
    assert final is not None
    expected = exact_answer(query)
    got = final_number(final.answer)
    return {"query": query, "answer": final.answer, "correct": got is not None and expected is not None
            and abs(got - expected) < 1e-6, "nodes": list(final.chunks[0].node_ids), "ms": final.total_ms}


async def fitness_snapshot(address: str) -> dict[str, float]:
    async with DellmClient(address) as client:
        return {n.info.name: n.fitness for n in await client.nodes()}


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, snapshots = report["records"], report["fitness"]
    window = 50
    correct = [1.0 if r["correct"] else 0.0 for r in records]
    rolling = [sum(correct[max(0, i - window + 1): i + 1]) / len(correct[max(0, i - window + 1): i + 1])
               for i in range(len(correct))]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    top.plot(range(1, len(rolling) + 1), rolling, color="black")
    top.set_ylabel(f"accuracy (rolling {window})")
    top.set_ylim(0, 1.05)
    top.set_title(f"DELLM routing learning: {report['network']} network, {len(records)} queries")
    names = sorted({n for s in snapshots for n in s["fitness"]})
    for name in names:
        xs = [s["after"] for s in snapshots if name in s["fitness"]]
        ys = [s["fitness"][name] for s in snapshots if name in s["fitness"]]
        bottom.plot(xs, ys, label=name)
    bottom.set_xlabel("query")
    bottom.set_ylabel("fitness")
    bottom.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def run(args: argparse.Namespace) -> dict:
    queries = make_queries(args.queries, args.seed)
    records: list[dict] = []
    snapshots: list[dict] = []
    with LocalCluster() as cluster:
        latency_weight, fitness_weight = args.weights
        cluster.start_coordinator(extra=["--redundancy", "1", "--exploration", args.exploration,
                                         "--seed", str(args.seed), "--max-tokens", "48",
                                         "--latency-weight", str(latency_weight), "--fitness-weight",
                                         str(fitness_weight)])
        if args.network == "scripted":
            specs = [scripted_spec(cluster, name, acc, i) for i, (name, acc) in enumerate(SCRIPTED.items())]
        else:
            specs = [NodeSpec(name, model, threads=1) for name, model in REAL.items()]
        cluster.start_nodes(specs)
        for index, query in enumerate(queries, start=1):
            if args.network == "scripted" and index == NEWCOMER[2]:
                cluster.start_node(scripted_spec(cluster, NEWCOMER[0], NEWCOMER[1], 99))
                cluster.wait_for_nodes(len(specs) + 1)
            records.append(asyncio.run(ask(cluster.coordinator_address, query)))
            if index % args.snapshot_every == 0 or index == len(queries):
                fitness = asyncio.run(fitness_snapshot(cluster.coordinator_address))
                snapshots.append({"after": index, "fitness": fitness})
            if index % 100 == 0:
                print(f"  {index} queries, accuracy of the last 100: "
                      f"{sum(r['correct'] for r in records[-100:]) / 100:.2f}", flush=True)
        names = {n.info.node_id: n.info.name for n in asyncio.run(_nodes(cluster.coordinator_address))}
    for record in records:
        record["nodes"] = [names.get(n, n) for n in record["nodes"]]
    return {"records": records, "fitness": snapshots}


async def _nodes(address: str) -> list:
    async with DellmClient(address) as client:
        return await client.nodes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=["scripted", "real"], default="scripted")
    parser.add_argument("--queries", type=int, default=None, help="default: 1000 scripted, 200 real")
    parser.add_argument("--exploration", choices=["ucb", "thompson", "none"], default="ucb")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", type=weight_pair, default=(0.7, 0.3),
                        help="latency,fitness weights of the routing score (default 0.7,0.3)")
    parser.add_argument("--snapshot-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.queries = args.queries or (1000 if args.network == "scripted" else 200)
    if args.queries < 200:
        parser.error("--queries must be at least 200 (first and last 100 are compared)")
    started = time.perf_counter()
    result = run(args)
    records = result["records"]
    first = sum(r["correct"] for r in records[:100]) / 100
    last = sum(r["correct"] for r in records[-100:]) / 100
    share = {}
    for label, window in (("first_100", records[:100]), ("last_100", records[-100:])):
        counts: dict[str, int] = {}
        for r in window:
            for name in r["nodes"]:
                counts[name] = counts.get(name, 0) + 1
        share[label] = dict(sorted(counts.items()))
    report = {
        "machine": machine(),
        "command": command_line("bench_fitness_growth.py"),
        "network": args.network,
        "exploration": args.exploration,
        "weights": {"latency": args.weights[0], "fitness": args.weights[1]},
        "queries": len(records),
        "accuracy_first_100": first,
        "accuracy_last_100": last,
        "relative_gain": (last - first) / first if first else None,
        "routing_share": share,
        "final_fitness": result["fitness"][-1]["fitness"],
        "wall_s": time.perf_counter() - started,
        **result,
    }
    out = args.out or ROOT / "bench-results" / f"fitness_{args.network}.json"
    write_report(out, report)
    plot(report, out.with_suffix(".png"))
    gain = report["relative_gain"]
    print(f"{args.network} network, {len(records)} queries: accuracy first 100 = {first:.2f}, last 100 = {last:.2f}"
          f" ({'+' if gain and gain >= 0 else ''}{gain * 100 if gain is not None else float('nan'):.0f}% relative;"
          f" target +20%)")
    print(f"routing share first 100: {share['first_100']}")
    print(f"routing share last 100:  {share['last_100']}")
    print(f"final fitness: { {k: round(v, 3) for k, v in report['final_fitness'].items()} }")
    print(f"written to {out} and {out.with_suffix('.png')} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
