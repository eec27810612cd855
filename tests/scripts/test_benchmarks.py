"""The benchmark scripts refuse nonsense parameters with a message, and a failed run is reported, never a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import bench_markdown
from scripts.bench_report import BenchmarkError, run_and_report

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_parallel.py", ["--ks", "4,8", "--nodes", "4"], "k=8 is larger than the 4 nodes"),
        ("bench_parallel.py", ["--delay", "-0.2"], "--delay must be positive"),
        ("bench_parallel.py", ["--ks", "1,two"], "expected whole numbers"),
        ("bench_routing_scale.py", ["--sizes", "0,10"], "at least 1"),
        ("bench_overhead.py", ["--rounds", "3"], "--rounds must be at least 10"),
        ("bench_throughput.py", ["--clients", "2", "--client-procs", "4"], "cannot exceed --clients"),
        ("bench_throughput.py", ["--seconds", "-1"], "--seconds must be positive"),
        ("bench_token_pace.py", ["--rounds", "0"], "--rounds must be at least 1"),
        ("bench_seed_query.py", ["--runs", "0"], "--runs must be at least 1"),
        ("bench_commits.py", ["no-such-commit"], "is not a commit"),
        ("bench_prompt_cache.py", ["--requests", "1"], "--requests must be at least 2"),
        ("bench_prompt_cache.py", ["--threads", "0"], "--threads must be at least 1"),
        ("bench_prompt_cache.py", ["--max-tokens", "0"], "--max-tokens must be at least 1"),
        ("bench_gateway.py", ["--rounds", "3"], "--rounds must be at least 10"),
        ("bench_gateway.py", ["--teach", "-1"], "--teach must be 0 or more"),
    ],
)
def test_nonsense_parameters_are_refused_with_a_message(script: str, args: list[str], message: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, f"scripts/{script}", *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()  # nothing measured, nothing written


def test_a_failed_run_writes_the_error_and_no_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"

    def measure() -> dict[str, object]:
        raise BenchmarkError("the query ended without an answer")

    assert run_and_report(out, "bench_overhead.py", measure) == 1
    report = json.loads(out.read_text())
    assert report["error"] == "BenchmarkError: the query ended without an answer"
    assert "ratio_p50" not in report and report["machine"] and report["command"].startswith("scripts/")
    assert "no figures" in capsys.readouterr().err


def test_the_generated_page_shows_a_failed_run_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "overhead.json").write_text(json.dumps(
        {"machine": "2 cores", "command": "scripts/bench_overhead.py", "error": "BenchmarkError: no answer"}))
    (tmp_path / "parallel.json").write_text(json.dumps(
        {"machine": "2 cores", "command": "scripts/bench_parallel.py", "delay_s": 0.2, "nodes": 2,
         "results": [{"k": 1, "median_s": 0.21, "ratio_to_D": 1.05, "sequential_s": 0.2},
                     {"k": 2, "median_s": 0.26, "ratio_to_D": 1.3, "sequential_s": 0.4}]}))
    monkeypatch.setattr(bench_markdown, "RESULTS", tmp_path)

    page = bench_markdown.render(bench_markdown.sections())

    assert "**The last run failed, so there is no figure:** BenchmarkError: no answer" in page
    assert "| Overhead against bare gRPC (issue 6) | run failed |" in page
    assert "| parallel speedup: worst k of [1, 2] | 1.30 x D | <= 1.2 x D | **not met** |" in page
    assert (tmp_path / "parallel.png").is_file()
