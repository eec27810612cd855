#!/usr/bin/env python3
"""Benchmark: what each change bought. Runs today's overhead and throughput benchmarks against
several commits, one after another on this machine, so a change's effect is measured, not guessed.

For each commit: a git worktree in a scratch folder, today's benchmark scripts copied into it (so
every commit is measured the same way), then bench_overhead.py and bench_throughput.py run there.
Results: bench-results/commits.json (one row per commit: its subject line and both reports).

    python scripts/bench_commits.py fd28485 f26a112 8187562 2827b37 ae76846
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench_report import BenchmarkError, run_and_report  # noqa: E402

SCRIPTS = ("bench_report.py", "bench_overhead.py", "bench_throughput.py")


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def measure_commit(commit: str, scratch: Path, overhead_rounds: int, seconds: float) -> dict[str, Any]:
    tree = scratch / commit
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        for name in SCRIPTS:
            shutil.copy(ROOT / "scripts" / name, tree / "scripts" / name)
        results: dict[str, Any] = {"commit": git("rev-parse", "--short", commit),
                                   "subject": git("log", "-1", "--format=%s", commit)}
        for script, args in (("bench_overhead.py", ["--rounds", str(overhead_rounds)]),
                             ("bench_throughput.py", ["--seconds", str(seconds)])):
            out = scratch / f"{commit}-{script}.json"
            run = subprocess.run([sys.executable, f"scripts/{script}", *args, "--out", str(out)], cwd=tree,
                                 capture_output=True, text=True, timeout=900)
            print(run.stdout.strip(), flush=True)
            report = json.loads(out.read_text()) if out.is_file() else {"error": run.stderr.strip()[-500:]}
            report.pop("samples_ms", None)
            results[script.removesuffix(".py")] = report
        return results
    finally:
        git("worktree", "remove", "--force", str(tree))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("commits", nargs="+", help="commits to measure, oldest first")
    parser.add_argument("--overhead-rounds", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window per commit")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "commits.json")
    args = parser.parse_args()
    if args.overhead_rounds < 10 or args.seconds <= 0:
        parser.error("--overhead-rounds must be at least 10 and --seconds positive")
    for commit in args.commits:
        try:
            git("rev-parse", "--verify", f"{commit}^{{commit}}")
        except subprocess.CalledProcessError:
            parser.error(f"{commit!r} is not a commit of this repository")

    def measure() -> dict[str, Any]:
        rows = []
        with tempfile.TemporaryDirectory(prefix="dellm-commits-") as scratch:
            for commit in args.commits:
                print(f"--- {commit}: {git('log', '-1', '--format=%s', commit)}", flush=True)
                rows.append(measure_commit(commit, Path(scratch), args.overhead_rounds, args.seconds))
        failed = [r["commit"] for r in rows if any("error" in r[k] for k in ("bench_overhead", "bench_throughput"))]
        if failed:
            raise BenchmarkError(f"the benchmarks failed at {', '.join(failed)}")
        return {"rows": rows}

    return run_and_report(args.out, "bench_commits.py", measure)


if __name__ == "__main__":
    sys.exit(main())
