#!/usr/bin/env python3
"""Benchmark: does routing learn? Where the work goes, and how fitness grows, on a mixed network.

Every query is "What is A op B?": the coordinator checks each answer exactly, rewards the node, and
routes the next query by its score (the seed's 0.7 x latency + 0.3 x (1 - fitness), fitness weighing
more as its evidence grows) with exploration. The coordinator runs with its default flags unless
--redundancy, --exploration, --weights or --max-tokens say otherwise. Reported per node, for the first
and the last quarter of the queries: its share of the node answers, how often it was right, its share
of the CPU the nodes used, and its fitness after each quarter; and the accuracy of the served answers
and how often no node was right (the coordinator served its own value).

  --network scripted   16 test-double nodes of set accuracy: 3 good (0.9-0.95), 8 fair (0.4-0.7),
                       3 poor (0.1-0.3) and 2 fast liars (0.0); a 0.97 newcomer joins at query 400;
                       1000 queries by default
  --network real       llama.cpp nodes on the four shipped models (one thread each), 40 queries by default

Results: bench-results/fitness_<network>.json and .png (accuracy, each node's fitness, and the share
of answers per node in each quarter).

    python scripts/bench_fitness_growth.py --network scripted --queries 1000
    python scripts/bench_fitness_growth.py --network real --queries 40
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import ClientConfig, DellmClient  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from dellm.coordinator.pipeline.answers import exact_answer, final_number  # noqa: E402
from dellm.protos import dellm_pb2  # noqa: E402
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
QUARTERS = ("q1", "q2", "q3", "q4")


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


def coordinator_flags(args: argparse.Namespace) -> list[str]:
    """Only what the command line overrides: the coordinator's own defaults otherwise."""
    flags = ["--seed", str(args.seed)]
    if args.redundancy is not None:
        flags += ["--redundancy", str(args.redundancy)]
    if args.exploration is not None:
        flags += ["--exploration", args.exploration]
    if args.weights is not None:
        flags += ["--latency-weight", str(args.weights[0]), "--fitness-weight", str(args.weights[1])]
    if args.max_tokens is not None:
        flags += ["--max-tokens", str(args.max_tokens)]
    return flags


async def ask(address: str, query: str) -> dict[str, object]:
    """One query: the served answer, and per node whether it was asked, answered, and how it was judged."""
    assigned: list[str] = []
    cancelled: list[str] = []
    final = None
    async with DellmClient(address, ClientConfig(ask_timeout_s=300)) as client:
        async for event in client.ask(query):
            kind = event.WhichOneof("event")
            if kind == "assignment":
                assigned += event.assignment.node_ids
            elif kind == "chunk_result":
                cancelled += event.chunk_result.cancelled_node_ids
            elif kind == "final":
                final = event.final
    assert final is not None
    expected = exact_answer(query)
    got = final_number(final.answer)
    verdicts = {r.node_id: dellm_pb2.Verdict.Name(r.verdict) if r.verdict else "UNKNOWN" for r in final.rewards}
    return {"query": query, "answer": final.answer, "correct": got is not None and expected is not None
            and abs(got - expected) < 1e-6, "assigned": assigned, "nodes": list(final.chunks[0].node_ids),
            "cancelled": cancelled, "verdicts": verdicts, "checked_by": final.checked_by, "ms": final.total_ms}


async def fitness_snapshot(address: str) -> dict[str, float]:
    async with DellmClient(address) as client:
        return {n.info.name: n.fitness for n in await client.nodes()}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux /proc); None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def cpu_sample(cluster: LocalCluster, names: list[str]) -> dict[str, float]:
    sample = {}
    for name in names:
        used = next((cpu_seconds(p.process.pid) for p in cluster.processes if p.name == name), None)
        if used is not None:
            sample[name] = used
    return sample


def quarter_bounds(count: int) -> list[tuple[int, int]]:
    """[start, end) of each quarter of ``count`` queries (the last takes the remainder)."""
    size = count // 4
    return [(i * size, (i + 1) * size if i < 3 else count) for i in range(4)]


def run(args: argparse.Namespace) -> dict:
    queries = make_queries(args.queries, args.seed)
    records: list[dict] = []
    snapshots: list[dict] = []
    bounds = quarter_bounds(len(queries))
    cpu: list[dict[str, float]] = []  # the nodes' CPU seconds at the start and after each quarter
    with LocalCluster() as cluster:
        cluster.start_coordinator(extra=coordinator_flags(args))
        if args.network == "scripted":
            specs = [scripted_spec(cluster, name, acc, i) for i, (name, acc) in enumerate(SCRIPTED.items())]
        else:
            specs = [NodeSpec(name, model, threads=1) for name, model in REAL.items()]
        cluster.start_nodes(specs)
        names = [spec.name for spec in specs]
        cpu.append(cpu_sample(cluster, names))
        for index, query in enumerate(queries, start=1):
            if args.network == "scripted" and index == NEWCOMER[2]:
                cluster.start_node(scripted_spec(cluster, NEWCOMER[0], NEWCOMER[1], 99))
                cluster.wait_for_nodes(len(specs) + 1)
                names.append(NEWCOMER[0])
            records.append(asyncio.run(ask(cluster.coordinator_address, query)))
            if index % args.snapshot_every == 0 or index == len(queries) or any(index == e for _, e in bounds):
                fitness = asyncio.run(fitness_snapshot(cluster.coordinator_address))
                snapshots.append({"after": index, "fitness": fitness})
            if any(index == end for _, end in bounds):
                cpu.append(cpu_sample(cluster, names))
            if index % args.progress_every == 0:
                window = records[-args.progress_every:]
                right = [v == "CORRECT" for r in window for v in r["verdicts"].values()]
                print(f"  {index} queries; last {len(window)}: node answers right "
                      f"{sum(right) / max(1, len(right)):.2f}, "
                      f"{sum(r['checked_by'] == 'coordinator' for r in window)} served by the coordinator", flush=True)
        ids = {n.info.node_id: n.info.name for n in asyncio.run(_nodes(cluster.coordinator_address))}
    for record in records:
        for key in ("assigned", "nodes", "cancelled"):
            record[key] = [ids.get(n, n) for n in record[key]]
        record["verdicts"] = {ids.get(n, n): v for n, v in record["verdicts"].items()}
    return {"records": records, "fitness": snapshots, "cpu": cpu, "bounds": bounds}


async def _nodes(address: str) -> list:
    async with DellmClient(address) as client:
        return await client.nodes()


def per_node(result: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """node -> figure -> quarter -> value: share of node answers, share of node answers judged right,
    own accuracy, share of the nodes' CPU, fitness after the quarter."""
    records, bounds, cpu = result["records"], result["bounds"], result["cpu"]
    names = sorted({n for r in records for n in r["assigned"]} | {n for s in result["fitness"] for n in s["fitness"]})
    figures: dict[str, dict[str, dict[str, float | None]]] = {n: {} for n in names}
    for index, (quarter, (start, end)) in enumerate(zip(QUARTERS, bounds, strict=True)):
        window = records[start:end]
        answers = [n for r in window for n in r["nodes"]]
        right = [n for r in window for n, v in r["verdicts"].items() if v == "CORRECT"]
        used = ({n: cpu[index + 1].get(n, 0.0) - cpu[index].get(n, 0.0) for n in names}
                if index + 1 < len(cpu) else {})
        total_cpu = sum(used.values())
        after = next((s["fitness"] for s in result["fitness"] if s["after"] == end), {})
        for name in names:
            judged = [v for r in window for n, v in r["verdicts"].items() if n == name and v != "UNKNOWN"]
            figures[name].setdefault("answer_share", {})[quarter] = answers.count(name) / len(answers) if answers else 0
            figures[name].setdefault("right_share", {})[quarter] = right.count(name) / len(right) if right else 0
            figures[name].setdefault("accuracy", {})[quarter] = (
                judged.count("CORRECT") / len(judged) if judged else None)
            figures[name].setdefault("answers", {})[quarter] = answers.count(name)
            figures[name].setdefault("cpu_share", {})[quarter] = (
                used.get(name, 0.0) / total_cpu if total_cpu else None)
            figures[name].setdefault("cpu_s", {})[quarter] = used.get(name)
            figures[name].setdefault("fitness", {})[quarter] = after.get(name)
    return figures


def plot(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, snapshots = report["records"], report["fitness"]
    window = min(50, max(1, len(records) // 4))
    correct = [1.0 if r["correct"] else 0.0 for r in records]
    rolling = [sum(correct[max(0, i - window + 1): i + 1]) / len(correct[max(0, i - window + 1): i + 1])
               for i in range(len(correct))]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(9, 10))
    top.plot(range(1, len(rolling) + 1), rolling, color="black")
    top.set_ylabel(f"served accuracy (rolling {window})")
    top.set_ylim(0, 1.05)
    top.set_title(f"DELLM routing learning: {report['network']} network, {len(records)} queries")
    names = sorted({n for s in snapshots for n in s["fitness"]})
    for name in names:
        xs = [s["after"] for s in snapshots if name in s["fitness"]]
        ys = [s["fitness"][name] for s in snapshots if name in s["fitness"]]
        middle.plot(xs, ys, label=name)
    middle.set_xlabel("query")
    middle.set_ylabel("fitness")
    middle.legend(loc="best", fontsize="small")
    bottoms = [0.0] * len(QUARTERS)
    for name in names:
        shares = [report["per_node"].get(name, {}).get("answer_share", {}).get(q) or 0.0 for q in QUARTERS]
        bottom.bar(QUARTERS, shares, bottom=bottoms, label=name)
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    bottom.set_ylabel("share of node answers")
    bottom.set_xlabel("quarter of the queries")
    bottom.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if percent else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=["scripted", "real"], default="scripted")
    parser.add_argument("--queries", type=int, default=None, help="default: 1000 scripted, 40 real")
    parser.add_argument("--exploration", choices=["ucb", "thompson", "none"], default=None,
                        help="default: the coordinator's")
    parser.add_argument("--redundancy", type=int, default=None, help="nodes per chunk; default: the coordinator's")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per answer; default: the coordinator's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", type=weight_pair, default=None,
                        help="latency,fitness base weights of the routing score (default: the coordinator's, 0.7,0.3)")
    parser.add_argument("--snapshot-every", type=int, default=10)
    parser.add_argument("--progress-every", type=int, default=None, help="default: a tenth of the queries")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.queries = args.queries or (1000 if args.network == "scripted" else 40)
    if args.queries < 8:
        parser.error("--queries must be at least 8 (the first and last quarters are compared)")
    args.progress_every = args.progress_every or max(1, args.queries // 10)
    started = time.perf_counter()
    result = run(args)
    records = result["records"]
    window = 100 if len(records) >= 200 else len(records) // 4  # the first and last 100, or quarters
    first = sum(r["correct"] for r in records[:window]) / window
    last = sum(r["correct"] for r in records[-window:]) / window
    share = {}
    for label, part in (("first_100", records[:window]), ("last_100", records[-window:])):
        counts: dict[str, int] = {}
        for r in part:
            for name in r["nodes"]:
                counts[name] = counts.get(name, 0) + 1
        share[label] = dict(sorted(counts.items()))
    figures = per_node(result)
    first_q, last_q = (records[s:e] for s, e in (result["bounds"][0], result["bounds"][-1]))
    report = {
        "machine": machine(),
        "command": command_line("bench_fitness_growth.py"),
        "network": args.network,
        "coordinator_flags": coordinator_flags(args),
        "exploration": args.exploration or "coordinator default",
        "weights": {"latency": args.weights[0], "fitness": args.weights[1]} if args.weights else None,
        "queries": len(records),
        "window": window,  # the accuracy_*_100 and routing_share figures are over this many queries
        "accuracy_first_100": first,
        "accuracy_last_100": last,
        "relative_gain": (last - first) / first if first else None,
        "routing_share": share,
        "coordinator_served_first_quarter": sum(r["checked_by"] == "coordinator" for r in first_q) / len(first_q),
        "coordinator_served_last_quarter": sum(r["checked_by"] == "coordinator" for r in last_q) / len(last_q),
        "per_node": figures,
        "final_fitness": result["fitness"][-1]["fitness"],
        "wall_s": time.perf_counter() - started,
        **result,
    }
    out = args.out or ROOT / "bench-results" / f"fitness_{args.network}.json"
    write_report(out, report)
    plot(report, out.with_suffix(".png"))
    print(f"{args.network} network, {len(records)} queries, coordinator flags: {' '.join(coordinator_flags(args))}")
    print(f"served answers right: first {window} = {first:.2f}, last {window} = {last:.2f}; "
          f"no node right (coordinator served its own value): first quarter "
          f"{report['coordinator_served_first_quarter']:.0%}, "
          f"last quarter {report['coordinator_served_last_quarter']:.0%}")
    print(f"{'node':<14} {'answers Q1 -> Q4':>18} {'right Q1 -> Q4':>16} {'accuracy Q1 -> Q4':>19} "
          f"{'CPU Q1 -> Q4':>14}   fitness after Q1, Q2, Q3, Q4")
    for name, f in figures.items():
        print(f"{name:<14} {_fmt(f['answer_share']['q1']):>8} -> {_fmt(f['answer_share']['q4']):<6} "
              f"{_fmt(f['right_share']['q1']):>6} -> {_fmt(f['right_share']['q4']):<6} "
              f"{_fmt(f['accuracy']['q1']):>8} -> {_fmt(f['accuracy']['q4']):<7} "
              f"{_fmt(f['cpu_share']['q1']):>5} -> {_fmt(f['cpu_share']['q4']):<5}   "
              + ", ".join(_fmt(f["fitness"][q], percent=False) for q in QUARTERS))
    print("(answers: share of the node answers; right: share of the answers judged right; CPU: share of the "
          "CPU the nodes used)")
    print(f"written to {out} and {out.with_suffix('.png')} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
