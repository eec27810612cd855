"""Tokens/s of one model under several llama.cpp builds: the same greedy generation in each build's
Python environment, in interleaved rounds (a, b, a, b, ...) so that a busy machine hurts each alike.

    python scripts/bench_llama_build.py --build avx512=.venv/bin/python --build avx2=/path/venv/bin/python \\
        [--model qwen2.5-coder-0.5b-instruct] [--rounds 4] [--runs 3] [--tokens 128] [--threads 2]

Each build reports its own system info (and so whether it has AMX). The generation runs in a child
process per round, so a build that crashes is reported as a failed run, not a crash of this script.
Writes bench-results/llama_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.node.models import CATALOGUE, ModelError, resolve_model  # noqa: E402
from scripts.bench_report import BenchmarkError, positive_ints, run_and_report  # noqa: E402

# Runs inside each build's own Python: load once, then `runs` timed greedy generations from a fresh context.
CHILD = r"""
import json, sys, time, llama_cpp
model, runs, tokens, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
info = llama_cpp.llama_print_system_info().decode()
llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_threads=threads, verbose=False, seed=0)
messages = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
results = []
for _ in range(runs + 1):  # the first is a warm-up
    llm.reset()  # the whole prompt is evaluated every time
    started = time.perf_counter(); first = None; pieces = []
    for chunk in llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=tokens, stream=True):
        text = chunk["choices"][0].get("delta", {}).get("content")
        if text:
            first = first or time.perf_counter()
            pieces.append(text)
    total = time.perf_counter() - started
    count = len(llm.tokenize("".join(pieces).encode(), add_bos=False, special=False))
    results.append({"tokens": count, "seconds": total, "ttft_s": (first or time.perf_counter()) - started})
print(json.dumps({"system_info": info, "version": llama_cpp.__version__, "runs": results[1:]}))
"""


def parse_builds(values: list[str]) -> dict[str, Path]:
    builds: dict[str, Path] = {}
    for value in values:
        label, sep, python = value.partition("=")
        if not sep or not label or not python:
            raise BenchmarkError(f"--build takes LABEL=PYTHON, got {value!r}")
        if not Path(python).exists():
            raise BenchmarkError(f"--build {label}: {python} does not exist")
        builds[label] = Path(python)
    if not builds:
        raise BenchmarkError("give at least one --build LABEL=PYTHON")
    return builds


def measure(args: argparse.Namespace) -> dict[str, Any]:
    builds = parse_builds(args.build)
    try:
        model = resolve_model(args.model).path
    except ModelError as exc:
        raise BenchmarkError(str(exc)) from exc
    per_build: dict[str, dict[str, Any]] = {label: {"runs": [], "failures": []} for label in builds}
    for round_index in range(args.rounds):
        for label, python in builds.items():
            done = subprocess.run([str(python), "-c", CHILD, str(model), str(args.runs), str(args.tokens),
                                   str(args.threads)], capture_output=True, text=True, timeout=900, check=False)
            record = per_build[label]
            if done.returncode != 0:
                record["failures"].append(f"round {round_index + 1}: exit {done.returncode}: "
                                          f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
                continue
            report = json.loads(done.stdout.strip().splitlines()[-1])
            record.update(system_info=report["system_info"], version=report["version"])
            record["runs"] += [{**run, "round": round_index + 1, "loadavg": os.getloadavg()[0]}
                               for run in report["runs"]]
    for record in per_build.values():
        rates = [r["tokens"] / r["seconds"] for r in record["runs"] if r["seconds"] > 0]
        ttfts = [r["ttft_s"] for r in record["runs"]]
        record["tokens_per_s"] = {"median": statistics.median(rates) if rates else None,
                                  "max": max(rates, default=None), "p10": percentile(rates, 10) if rates else None}
        record["ttft_s"] = {"median": statistics.median(ttfts) if ttfts else None, "min": min(ttfts, default=None)}
        record["amx"] = "AMX" in record.get("system_info", "") and "AMX_INT8 = 1" in record.get("system_info", "")
    return {"model": args.model, "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds,
            "runs_per_round": args.runs, "builds": per_build}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="append", default=[], metavar="LABEL=PYTHON")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", choices=sorted(CATALOGUE))
    parser.add_argument("--rounds", type=positive_ints, default=[4])
    parser.add_argument("--runs", type=positive_ints, default=[3])
    parser.add_argument("--tokens", type=positive_ints, default=[128])
    parser.add_argument("--threads", type=positive_ints, default=[2])
    args = parser.parse_args()
    args.rounds, args.runs, args.tokens, args.threads = args.rounds[0], args.runs[0], args.tokens[0], args.threads[0]
    try:
        parse_builds(args.build)  # bad arguments: one line and exit 2, no report
    except BenchmarkError as exc:
        print(f"bench_llama_build: {exc}", file=sys.stderr)
        return 2
    return run_and_report(ROOT / "bench-results" / "llama_build.json", "bench_llama_build.py", lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
