#!/usr/bin/env python3
"""Benchmark: seed-style compound queries end to end through `dellm ask` on real-model nodes on this machine.

Starts a coordinator with its default flags (its default synthesis model) and one llama.cpp node per
--models entry (by default one qwen2.5-coder-1.5b-instruct and two qwen2.5-coder-0.5b-instruct, one
thread each) as processes on loopback, then asks every query of --data as a person would, one
`python -m dellm.client.cli ask QUERY --json` process per query, timing its wall clock. A query is
fully correct when the final answer states every expected value and names every expected fact.
Reports accuracy (overall and per kind), unanimous consensus, latency p50/p95 and each failure with
its answer text; results go to bench-results/compound_queries.json.

    python scripts/bench_compound.py              # the whole set on the default network
    python scripts/bench_compound.py --n 8        # the first 8 queries
    python scripts/bench_compound.py --alone qwen2.5-coder-1.5b-instruct   # one node alone, the comparison

The data file has one JSON object per line: {"query": ..., "expect": [...], "kind": ...}, where each
expected item is {"number": 36} (the answer states this value; "1,158", "$36.00" and "36.0" count) or
{"any": ["Tokyo"]} (one of the words or phrases appears, ignoring case).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import DellmClient  # noqa: E402
from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from dellm.coordinator.cli import DEFAULT_SYNTH_MODEL  # noqa: E402
from scripts.bench_report import BenchmarkError, node_stream, run_and_report  # noqa: E402

SCRIPT = "bench_compound.py"
QWEN_15B = "qwen2.5-coder-1.5b-instruct"
QWEN_05B = "qwen2.5-coder-0.5b-instruct"
DEFAULT_MODELS = (QWEN_15B, QWEN_05B, QWEN_05B)
DEFAULT_DATA = ROOT / "scripts" / "compound_queries.jsonl"
DEFAULT_OUT = ROOT / "bench-results" / "compound_queries.json"
KINDS = ("arithmetic", "mixed", "dependent", "fact")
ASK_TIMEOUT_S = 300.0  # one `dellm ask`, start to exit: far beyond any target, so a stuck query is an error
NODE_READY_TIMEOUT_S = 300.0  # loading a model and its self-check on a busy two-core machine
ALONE_MAX_TOKENS = 256  # one node answers the whole query, every part of it (a chunk gets 96)
TARGETS = {"accuracy_min": 0.95, "unanimous_rate_over": 0.70, "latency_p50_s_under": 3.0,
           "latency_p95_s_under": 5.0}
NUMBER_TOLERANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------------------------


class DataError(ValueError):
    """The query file is missing or a line of it is not a valid compound query; the message names the line."""


@dataclass(frozen=True)
class CompoundQuery:
    index: int  # 1-based line number in the data file
    query: str
    expect: tuple[Mapping[str, Any], ...]
    kind: str = ""


def check_item(item: object) -> str:
    """Why ``item`` is not a valid expectation, or "" when it is."""
    if not isinstance(item, dict) or len(item) != 1:
        return f"an expected item is {{\"number\": N}} or {{\"any\": [...]}}, got {item!r}"
    if "number" in item:
        value = item["number"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"\"number\" must be a finite number, got {value!r}"
        return ""
    if "any" in item:
        phrases = item["any"]
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            return f"\"any\" must be a non-empty list of non-empty strings, got {phrases!r}"
        return ""
    return f"an expected item is {{\"number\": N}} or {{\"any\": [...]}}, got {item!r}"


def parse_query_line(line: str, index: int) -> CompoundQuery:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"line {index} is not JSON: {exc}") from None
    if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
        raise DataError(f"line {index} has no \"query\" string")
    expect = row.get("expect")
    if not isinstance(expect, list) or not expect:
        raise DataError(f"line {index} has no \"expect\" list")
    for item in expect:
        problem = check_item(item)
        if problem:
            raise DataError(f"line {index}: {problem}")
    kind = row.get("kind", "")
    if not isinstance(kind, str):
        raise DataError(f"line {index}: \"kind\" must be a string, got {kind!r}")
    return CompoundQuery(index, row["query"].strip(), tuple(expect), kind)


def load_queries(path: Path) -> list[CompoundQuery]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read the query file {path}: {exc.strerror or exc}") from None
    queries = [parse_query_line(line, number) for number, line in enumerate(lines, start=1) if line.strip()]
    if not queries:
        raise DataError(f"the query file {path} has no queries")
    return queries


# ---------------------------------------------------------------------------------------------
# Scoring (pure)
# ---------------------------------------------------------------------------------------------

# A number as people write it: optional sign, thousands separators ("1,158") or plain digits, decimals.
# Not the end of a word ("H2O", "CO2") and not the tail of another number; a unit may follow ("100C").
_NUMBER = re.compile(r"(?<![\w.])(-?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")


def numbers_in(text: str) -> list[float]:
    """Every number ``text`` states, as values: "$1,158.00" is 1158.0, "36%" is 36.0, "-4" is -4.0."""
    values = []
    for match in _NUMBER.finditer(text):
        sign, whole, fraction = match.groups()
        values.append(float(sign + whole.replace(",", "") + (fraction or "")))
    return values


def states_number(text: str, value: float) -> bool:
    return any(math.isclose(found, value, rel_tol=NUMBER_TOLERANCE, abs_tol=NUMBER_TOLERANCE)
               for found in numbers_in(text))


def mentions(text: str, phrases: Iterable[str]) -> bool:
    """Whether one of ``phrases`` appears in ``text`` as a word or phrase, ignoring case and spacing."""
    for phrase in phrases:
        pattern = r"\s+".join(re.escape(word) for word in phrase.split())
        if re.search(rf"(?<!\w){pattern}(?!\w)", text, re.IGNORECASE):
            return True
    return False


def item_found(text: str, item: Mapping[str, Any]) -> bool:
    if "number" in item:
        return states_number(text, float(item["number"]))
    return mentions(text, item["any"])


def describe_item(item: Mapping[str, Any]) -> str:
    if "number" in item:
        return f"{item['number']:g}" if isinstance(item["number"], float) else str(item["number"])
    return " | ".join(item["any"])


def missing_items(text: str, expect: Sequence[Mapping[str, Any]]) -> list[str]:
    """The expected items ``text`` does not state, described for a person; empty when fully correct."""
    return [describe_item(item) for item in expect if not item_found(text, item)]


def is_fully_correct(text: str, expect: Sequence[Mapping[str, Any]]) -> bool:
    return not missing_items(text, expect)


# ---------------------------------------------------------------------------------------------
# One query
# ---------------------------------------------------------------------------------------------


@dataclass
class QueryRecord:
    index: int
    query: str
    kind: str
    expect: list[str]
    answer: str = ""
    correct: bool = False
    missing: list[str] = field(default_factory=list)
    error: str = ""
    latency_s: float = 0.0  # wall clock of the whole `dellm ask` process (or of the node's stream, alone)
    coordinator_ms: float | None = None  # the coordinator's own total, from the final event
    query_id: str = ""
    planner: str = ""
    synthesis: str = ""
    chunks: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AskOutcome:
    """What one `dellm ask --json` printed, read from its event lines."""

    final: dict[str, Any] | None = None
    planner: str = ""
    chunks: list[dict[str, Any]] = field(default_factory=list)


def read_events(stdout: str, names: Mapping[str, str] | None = None) -> AskOutcome:
    """The plan, the chunk results (with their votes) and the final event from `dellm ask --json` output.

    Each line is one AskEvent as JSON with the proto's field names; fields at their default value are
    left out (an absent "unanimous" is false), and 64-bit integers arrive as strings.
    """
    names = names or {}
    outcome = AskOutcome()
    planned: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        if "plan" in event:
            outcome.planner = event["plan"].get("planner", "")
            for chunk in event["plan"].get("chunks", []):
                planned[chunk.get("chunk_id", "")] = chunk
        elif "chunk_result" in event:
            result = event["chunk_result"]
            results[result.get("chunk_id", "")] = result  # a later result for a chunk replaces an earlier one
        elif "final" in event:
            outcome.final = event["final"]
    provenance = {c.get("chunk_id", ""): c for c in (outcome.final or {}).get("chunks", [])}
    for chunk_id in dict.fromkeys([*planned, *results, *provenance]):
        plan, result, done = planned.get(chunk_id, {}), results.get(chunk_id, {}), provenance.get(chunk_id, {})
        votes = [{"node": names.get(v.get("node_id", ""), v.get("node_id", "")[:8]), "answer": v.get("answer", ""),
                  "normalized": v.get("normalized", ""), "failed": bool(v.get("failed", False)),
                  "error": v.get("error", ""), "latency_ms": float(v.get("latency_ms", 0.0))}
                 for v in result.get("votes", [])]
        outcome.chunks.append({
            "chunk_id": chunk_id,
            "operation": done.get("operation", plan.get("operation", "")),
            "text": done.get("text", plan.get("text", "")),
            "depends_on": plan.get("depends_on", []),
            "answer": result.get("answer", done.get("answer", "")),
            "unanimous": bool(result.get("unanimous", done.get("unanimous", False))),
            "groups": int(result.get("groups", 0)),
            "valid_votes": sum(1 for v in votes if not v["failed"] and v["normalized"]),
            "votes": votes,
            "cancelled": [names.get(n, n[:8]) for n in result.get("cancelled_node_ids", [])],
        })
    return outcome


def ask_command(address: str, query: str) -> list[str]:
    return [sys.executable, "-m", "dellm.client.cli", "ask", query, "--json", "--coordinator", address]


def ask_through_cli(address: str, item: CompoundQuery, names: Mapping[str, str],
                    timeout_s: float = ASK_TIMEOUT_S) -> QueryRecord:
    """Ask one query with `dellm ask --json` in its own process; a failure becomes the record's error."""
    record = QueryRecord(item.index, item.query, item.kind, [describe_item(i) for i in item.expect])
    env = {key: value for key, value in os.environ.items() if key != "DELLM_TOKEN"}  # the cluster has no token
    started = time.perf_counter()
    try:
        done = subprocess.run(ask_command(address, item.query), capture_output=True, text=True, env=env,
                              timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        record.latency_s = time.perf_counter() - started
        record.error = f"no answer within {timeout_s:.0f} s"
        record.missing = list(record.expect)
        return record
    record.latency_s = time.perf_counter() - started
    try:
        outcome = read_events(done.stdout, names)
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
        outcome = AskOutcome()
        record.error = f"unreadable event line: {exc}"
    record.chunks = outcome.chunks
    record.planner = outcome.planner
    if done.returncode != 0 or outcome.final is None:
        lines = done.stderr.strip().splitlines()
        record.error = record.error or (lines[-1] if lines else f"dellm ask exited {done.returncode} without a final")
        record.missing = list(record.expect)
        return record
    final = outcome.final
    record.answer = final.get("answer", "")
    record.query_id = final.get("query_id", "")
    record.synthesis = final.get("synthesis", "")
    record.coordinator_ms = float(final.get("total_ms", 0.0))
    record.missing = missing_items(record.answer, item.expect)
    record.correct = not record.missing
    return record


async def _stream_alone(address: str, query: str, timeout_s: float) -> str:
    parts = [chunk.text async for chunk in node_stream(address, query, ALONE_MAX_TOKENS, timeout=timeout_s)]
    return "".join(parts)


def ask_alone(address: str, item: CompoundQuery, timeout_s: float = ASK_TIMEOUT_S) -> QueryRecord:
    """The whole query asked of one node's Generate: no decomposition, voting or synthesis."""
    import grpc

    record = QueryRecord(item.index, item.query, item.kind, [describe_item(i) for i in item.expect])
    started = time.perf_counter()
    try:
        record.answer = asyncio.run(_stream_alone(address, item.query, timeout_s))
    except grpc.aio.AioRpcError as exc:
        record.error = f"{exc.code().name}: {exc.details()}"
    record.latency_s = time.perf_counter() - started
    record.missing = missing_items(record.answer, item.expect) if not record.error else list(record.expect)
    record.correct = not record.missing and not record.error
    return record


# ---------------------------------------------------------------------------------------------
# Summary (pure)
# ---------------------------------------------------------------------------------------------


def consensus_figures(records: Sequence[QueryRecord]) -> dict[str, Any]:
    """Unanimous chunks among those with two or more valid votes, and among all chunks."""
    chunks = [c for r in records for c in r.chunks]
    compared = [c for c in chunks if c["valid_votes"] >= 2]
    unanimous = sum(1 for c in compared if c["unanimous"])
    return {
        "chunks": len(chunks),
        "chunks_with_2plus_votes": len(compared),
        "unanimous_chunks": unanimous,
        "unanimous_rate": unanimous / len(compared) if compared else None,
        "unanimous_share_of_all_chunks": unanimous / len(chunks) if chunks else None,
    }


def summarize(records: Sequence[QueryRecord]) -> dict[str, Any]:
    questions = len(records)
    correct = sum(r.correct for r in records)
    latencies = [r.latency_s for r in records if not r.error]
    coordinator = [r.coordinator_ms / 1000 for r in records if not r.error and r.coordinator_ms is not None]
    per_kind: dict[str, dict[str, Any]] = {}
    for record in records:
        stats = per_kind.setdefault(record.kind or "untagged", {"queries": 0, "correct": 0})
        stats["queries"] += 1
        stats["correct"] += record.correct
    for stats in per_kind.values():
        stats["accuracy"] = stats["correct"] / stats["queries"]
    return {
        "queries": questions,
        "errors": sum(1 for r in records if r.error),
        "fully_correct": correct,
        "accuracy": correct / questions if questions else None,
        "per_kind": dict(sorted(per_kind.items())),
        "consensus": consensus_figures(records),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_max_s": max(latencies) if latencies else None,
        "coordinator_p50_s": percentile(coordinator, 50),
        "coordinator_p95_s": percentile(coordinator, 95),
    }


def targets_met(summary: Mapping[str, Any]) -> dict[str, bool | None]:
    def at_least(value: float | None, bound: float) -> bool | None:
        return None if value is None else value >= bound

    def under(value: float | None, bound: float) -> bool | None:
        return None if value is None else value < bound

    rate = summary["consensus"]["unanimous_rate"]
    return {
        "accuracy": at_least(summary["accuracy"], TARGETS["accuracy_min"]),
        "unanimous": None if rate is None else rate > TARGETS["unanimous_rate_over"],
        "latency_p50": under(summary["latency_p50_s"], TARGETS["latency_p50_s_under"]),
        "latency_p95": under(summary["latency_p95_s"], TARGETS["latency_p95_s_under"]),
    }


def failures(records: Sequence[QueryRecord]) -> list[dict[str, Any]]:
    return [{"index": r.index, "kind": r.kind, "query": r.query, "missing": r.missing, "answer": r.answer,
             "error": r.error} for r in records if not r.correct]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _met(flag: bool | None) -> str:
    return {True: "met", False: "NOT MET", None: "-"}[flag]


def print_summary(title: str, summary: Mapping[str, Any], records: Sequence[QueryRecord], network: bool) -> None:
    met = targets_met(summary)
    print(title)
    print(f"  fully correct  {summary['fully_correct']}/{summary['queries']} ({_share(summary['accuracy'])}; "
          f"target >= 95%: {_met(met['accuracy'])}); errors {summary['errors']}")
    print("  per kind       " + ", ".join(f"{kind} {s['correct']}/{s['queries']}"
                                         for kind, s in summary["per_kind"].items()))
    if network:
        c = summary["consensus"]
        print(f"  unanimous      {_share(c['unanimous_rate'])} of {c['chunks_with_2plus_votes']} chunks with 2+ votes "
              f"(target > 70%: {_met(met['unanimous'])}); {_share(c['unanimous_share_of_all_chunks'])} of all "
              f"{c['chunks']} chunks")
    print(f"  latency        p50 {_seconds(summary['latency_p50_s'])} (target < 3 s: {_met(met['latency_p50'])}), "
          f"p95 {_seconds(summary['latency_p95_s'])} (target < 5 s: {_met(met['latency_p95'])}), "
          f"max {_seconds(summary['latency_max_s'])}"
          + (f"; coordinator's own p50 {_seconds(summary['coordinator_p50_s'])}" if network else ""))
    wrong = failures(records)
    if wrong:
        print(f"  failures ({len(wrong)}):")
    for f in wrong:
        answer = " ".join(f["answer"].split())
        what = f"error: {f['error']}" if f["error"] else f"missing {', '.join(f['missing'])}"
        print(f"    #{f['index']} {f['query']!r}: {what}; answer {answer[:160]!r}")


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


def _progress(number: int, total: int, record: QueryRecord) -> None:
    mark = f"ERROR {record.error}" if record.error else ("right" if record.correct else
                                                         f"wrong (missing {', '.join(record.missing)})")
    print(f"  [{number}/{total}] #{record.index} {record.latency_s:5.2f} s {mark}: {record.query!r}", flush=True)


def _node_name(model: str, number: int) -> str:
    stem = Path(model).stem if model.endswith(".gguf") else model
    return f"{stem}-{number}"


def _ask_all(queries: Sequence[CompoundQuery], ask: Callable[[CompoundQuery], QueryRecord]) -> list[QueryRecord]:
    records = []
    for number, item in enumerate(queries, start=1):
        records.append(ask(item))
        _progress(number, len(queries), records[-1])
    if all(r.error for r in records):
        raise BenchmarkError(f"no query was answered; the first error: {records[0].error}")
    return records


def run_network(args: argparse.Namespace, queries: Sequence[CompoundQuery]) -> dict[str, Any]:
    specs = [NodeSpec(_node_name(model, number), model, threads=args.threads)
             for number, model in enumerate(args.models, start=1)]
    setup = (f"coordinator with its default flags (synthesis model {args.synth_model}) and "
             + ", ".join(f"{s.name} ({args.threads} thread{'s' * (args.threads > 1)})" for s in specs)
             + f" as llama.cpp processes on loopback on this machine ({os.cpu_count()} cores); each query asked "
               "through `python -m dellm.client.cli ask QUERY --json` in its own process, wall clock timed")
    print(setup, flush=True)
    with LocalCluster() as cluster:
        cluster.start_coordinator(synth_model=args.synth_model, ready_timeout=NODE_READY_TIMEOUT_S)
        cluster.start_nodes(specs, ready_timeout=NODE_READY_TIMEOUT_S)

        async def node_names() -> dict[str, str]:
            async with DellmClient(cluster.coordinator_address) as client:
                return await client.node_names()

        names = asyncio.run(node_names())
        records = _ask_all(queries, partial(ask_through_cli, cluster.coordinator_address, names=names))
    summary = summarize(records)
    print_summary(f"compound queries, {len(records)} asked of the network ({args.data.name}):", summary, records,
                  network=True)
    return {"setup": setup, "data": str(args.data), "models": list(args.models), "threads": args.threads,
            "synth_model": args.synth_model, "summary": summary, "targets": TARGETS,
            "targets_met": targets_met(summary), "failures": failures(records),
            "records": [asdict(r) for r in records]}


def run_alone(args: argparse.Namespace, queries: Sequence[CompoundQuery]) -> dict[str, Any]:
    setup = (f"one llama.cpp node ({args.alone}, {args.threads} thread{'s' * (args.threads > 1)}) answering each "
             f"whole query alone (no coordinator, no decomposition, voting or synthesis; up to {ALONE_MAX_TOKENS} "
             f"tokens, the coordinator's system prompt) on loopback on this machine ({os.cpu_count()} cores)")
    print(setup, flush=True)
    with LocalCluster() as cluster:
        node = cluster.start_node(NodeSpec(_node_name(args.alone, 1), args.alone, threads=args.threads),
                                  ready_timeout=NODE_READY_TIMEOUT_S)
        records = _ask_all(queries, partial(ask_alone, node.address))
    summary = summarize(records)
    print_summary(f"compound queries, {len(records)} asked of {args.alone} alone ({args.data.name}):", summary,
                  records, network=False)
    return {"setup": setup, "data": str(args.data), "model": args.alone, "threads": args.threads,
            "summary": summary, "targets": TARGETS, "targets_met": targets_met(summary),
            "failures": failures(records), "records": [asdict(r) for r in records]}


# ---------------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------------


class OneLineParser(argparse.ArgumentParser):
    """Refuses a bad argument with one line on stderr and exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def model_problem(model: str) -> str:
    """Why ``model`` cannot run here (not in the catalogue, not pulled, not a .gguf file), or ""."""
    from dellm.node.models import ModelError, resolve_model

    try:
        resolve_model(model, verify=False)  # the node checks the sha256 when it loads the file
    except ModelError as exc:
        return f"unknown or unavailable model {model!r}: {exc}"
    return ""


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=SCRIPT, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated models, one node each (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per node (default %(default)s)")
    parser.add_argument("--n", type=int, default=None, help="ask only the first N queries (default: all)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="query file, JSON lines (default %(default)s)")
    parser.add_argument("--synth-model", default=DEFAULT_SYNTH_MODEL,
                        help="the coordinator's synthesis model or 'none' (default: the coordinator's own, "
                             "%(default)s)")
    parser.add_argument("--alone", metavar="MODEL", default=None,
                        help="instead: one node of MODEL answers each whole query alone, no coordinator "
                             "(the single-model comparison; report: OUT's name + _alone)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (default %(default)s)")
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[CompoundQuery]]:
    """The flags and the queries to ask; a bad argument exits 2 with one line, before anything starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        parser.error("--models needs at least one model")
    try:
        queries = load_queries(args.data)
    except DataError as exc:
        parser.error(str(exc))
    if args.n is not None and args.n > len(queries):
        parser.error(f"--n {args.n} is more than the {len(queries)} queries in {args.data}")
    wanted = [args.alone] if args.alone else [*dict.fromkeys(args.models),
                                              *([args.synth_model] if args.synth_model != "none" else [])]
    for model in wanted:
        problem = model_problem(model)
        if problem:
            parser.error(problem)
    return args, queries[: args.n]


def main(argv: Sequence[str] | None = None) -> int:
    args, queries = parse_arguments(argv)
    if args.alone:
        return run_and_report(args.out.with_name(args.out.stem + "_alone.json"), SCRIPT,
                              partial(run_alone, args, queries))
    return run_and_report(args.out, SCRIPT, partial(run_network, args, queries))


if __name__ == "__main__":
    sys.exit(main())
