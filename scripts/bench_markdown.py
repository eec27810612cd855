#!/usr/bin/env python3
"""Write BENCHMARKS.md (and the plots it shows) from the JSON reports in bench-results/.

Every section comes from one report: the machine and the command that produced it, its figures
with their targets (met or not), a plot where a curve says more than a number, and the hand-written
notes in bench-results/notes/<section>.md (what limits the figure, what a run showed). A report
that holds an error is shown as that error, never as a figure. `make bench` re-runs the
performance suite and then this; `make bench-report` only this.

    python scripts/bench_markdown.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"

Report = dict[str, Any]


@dataclass
class Figure:
    """One line of the summary: a measured figure beside its target."""

    name: str
    measured: str
    target: str = ""
    met: bool | None = None  # None: no target


@dataclass
class Section:
    title: str
    key: str  # bench-results/notes/<key>.md holds its notes
    lines: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    machines: set[str] = field(default_factory=set)


def load(name: str) -> Report | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def met(value: bool) -> str:
    return "met" if value else "**not met**"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def describe_machine(machine: str | dict[str, Any]) -> str:
    if isinstance(machine, str):
        return machine
    return f"{machine['cpu_count']} cores, {machine['machine']}, Python {machine['python']}"


def provenance(section: Section, report: Report) -> bool:
    """The command and machine lines; False (and the error shown) when the run failed."""
    section.machines.add(describe_machine(report["machine"]))
    section.lines += [f"`python {report['command']}` on {describe_machine(report['machine'])}."]
    if "error" in report:
        section.lines += ["", f"**The last run failed, so there is no figure:** {report['error']}"]
        section.figures.append(Figure(section.title, "run failed", "", False))
        return False
    return True


def plot(name: str, draw: Callable[[plt.Axes], None], *, size: tuple[float, float] = (6.4, 3.6)) -> str:
    figure, axes = plt.subplots(figsize=size)
    draw(axes)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(RESULTS / name, dpi=110)
    plt.close(figure)
    return f"![{name}](bench-results/{name})"


# --- issue 6: performance and scale -------------------------------------------------------------


def gateway(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    rows = [[label, f"{report[f'{key}_ms']['p50']:.2f}", f"{report[f'{key}_ms']['p99']:.2f}"]
            for key, label in (("grpc", "`dellm ask`'s path: DellmClient.ask over gRPC"),
                               ("http", "POST /v1/chat/completions through `dellm gateway`"),
                               ("http-stream", "the same, streamed to `data: [DONE]`"))
            if f"{key}_ms" in report]
    added = report["gateway_added_ms"]
    section.lines += ["", *table(["path", "p50 ms", "p99 ms"], rows), "",
                      f"The gateway adds **{added['p50']:.2f} ms** at the median and {added['p99']:.2f} ms at p99 "
                      f"(differences of the percentiles), over {report['rounds']} queries "
                      f"({report['query']!r}) on scripted nodes."]
    section.figures.append(Figure("HTTP gateway: added p50 latency", f"{added['p50']:.2f} ms"))


def overhead(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    rows = [[label, f"{report[f'{key}_ms']['p50']:.2f}", f"{report[f'{key}_ms']['p99']:.2f}"]
            for key, label in (("bare", "bare grpc.aio server stream, two processes (the floor)"),
                               ("direct", "the query's 4 node streams opened straight from the client"),
                               ("dellm", "DELLM: two-chunk query, redundancy 2, through the coordinator"))
            if f"{key}_ms" in report]
    ratio = report["ratio_p50"]
    section.lines += ["", *table(["path", "p50 ms", "p99 ms"], rows), "",
                      f"DELLM p50 / bare p50 = **{ratio:.1f}x** (target at most 3x: {met(ratio <= 3)})."]
    section.figures.append(Figure("overhead: DELLM p50 / bare gRPC stream p50", f"{ratio:.1f}x", "<= 3x",
                                  ratio <= 3))
    if "ratio_p50_to_direct_fanout" in report:
        section.lines[-1] += (f" Against its own fan-out done by the client, the coordinator costs "
                              f"{report['ratio_p50_to_direct_fanout']:.1f}x.")
    cpu = report.get("cpu_ms_per_query")
    if cpu:
        nodes = sum(ms for name, ms in cpu.items() if name not in ("coordinator", "client"))
        total = sum(cpu.values())
        asked = len(report["samples_ms"]["dellm"])
        section.lines += ["", f"CPU per query (the same query asked {asked} times in a row): "
                              f"coordinator {cpu['coordinator']:.2f} ms, the four nodes {nodes:.2f} ms, the client "
                              f"{cpu['client']:.2f} ms; {total:.1f} ms in all on 2 cores, so no schedule could answer "
                              f"in under {total / 2:.1f} ms here."]
    samples = report.get("samples_ms")
    if samples:
        def draw(axes: plt.Axes) -> None:
            for key, label in (("bare", "bare stream"), ("direct", "4 node streams, direct"), ("dellm", "DELLM")):
                values = sorted(samples[key])
                axes.plot(values, [(i + 1) / len(values) for i in range(len(values))], label=label)
            axes.set_xscale("log")
            axes.set(xlabel="round trip (ms, log)", ylabel="fraction of calls", title="Overhead: latency CDF")
            axes.legend()
        section.lines += ["", plot("overhead.png", draw)]


def parallel(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    delay = report["delay_s"]
    results = report["results"]
    rows = [[str(r["k"]), f"{r['median_s']:.3f}", f"{r['ratio_to_D']:.2f}", f"{r['sequential_s']:.1f}"]
            for r in results]
    worst = max(r["ratio_to_D"] for r in results)
    section.lines += ["", *table(["k chunks on k nodes", "end to end (s, median)", "x D", "sequential k x D (s)"],
                                 rows), "", f"D = {delay} s. Worst k: {worst:.2f} x D (target at most 1.2 x D for "
                                            f"every k: {met(worst <= 1.2)})."]
    section.figures.append(Figure(f"parallel speedup: worst k of {[r['k'] for r in results]}", f"{worst:.2f} x D",
                                  "<= 1.2 x D", worst <= 1.2))

    def draw(axes: plt.Axes) -> None:
        ks = [r["k"] for r in results]
        axes.plot(ks, [r["median_s"] for r in results], "o-", label="DELLM, measured")
        axes.plot(ks, [delay] * len(ks), "--", label="ideal: D")
        axes.plot(ks, [k * delay for k in ks], ":", label="sequential: k x D")
        axes.set(xscale="log", yscale="log", xlabel="k independent chunks (log)", ylabel="seconds (log)",
                 title=f"Parallel speedup, D = {delay} s")
        axes.set_xticks(ks, [str(k) for k in ks])
        axes.legend()
    section.lines += ["", plot("parallel.png", draw)]


def routing(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    rows = report["rows"]
    if "rebuild_ms" not in rows[0]:
        section.lines += ["", "(a report from before the shortlist; re-run the command)"]
        return
    section.lines += ["", *table(
        ["nodes", "decision p50 us (none / ucb / thompson)", "p99 us (thompson)", "scoring every node us",
         "ranking rebuild ms", "SQLite load at start ms", "bytes per node entry"],
        [[f"{r['nodes']:,}", f"{r['route_p50_us_none']:.0f} / {r['route_p50_us_ucb']:.0f} / "
                             f"{r['route_p50_us_thompson']:.0f}", f"{r['route_p99_us_thompson']:.0f}",
          f"{r['score_all_us_thompson']:,.0f}", f"{r['rebuild_ms']:.2f}", f"{r['registry_load_ms']:.1f}",
          f"{r['bytes_per_entry']:.0f}"] for r in rows])]
    if "redis_full_read_ms" in rows[0]:
        section.lines += ["", f"A shared Redis registry (several coordinators): reading every node against a "
                              f"refresh from its change log with {report['redis_changed_per_refresh']} nodes changed "
                              "since the last look.", "", *table(
                                  ["nodes", "Redis full read ms", "Redis change-log refresh ms"],
                                  [[f"{r['nodes']:,}", f"{r['redis_full_read_ms']:.1f}", f"{r['redis_refresh_ms']:.2f}"]
                                   for r in rows])]
    largest = rows[-1]
    p50 = max(largest[f"route_p50_us_{mode}"] for mode in ("none", "ucb", "thompson"))
    section.figures.append(Figure(f"routing decision p50 at {largest['nodes']:,} nodes (slowest mode)",
                                  f"{p50:.0f} us", "< 100 us", p50 < 100))
    section.figures.append(Figure(f"memory per node entry at {largest['nodes']:,} nodes",
                                  f"{largest['bytes_per_entry']:.0f} B"))

    def draw(axes: plt.Axes) -> None:
        sizes = [r["nodes"] for r in rows]
        for mode in ("none", "ucb", "thompson"):
            axes.plot(sizes, [r[f"route_p50_us_{mode}"] for r in rows], "o-", label=f"decision, {mode}")
        axes.plot(sizes, [r["score_all_us_thompson"] for r in rows], "s:", label="scoring every node (thompson)")
        axes.axhline(100, color="grey", linestyle="--", label="target: 100 us")
        axes.set(xscale="log", yscale="log", xlabel="registered nodes (log)", ylabel="microseconds (log)",
                 title="One routing decision")
        axes.legend(fontsize=8)
    section.lines += ["", plot("routing_scale.png", draw)]


def throughput(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    dellm, bare = report["dellm"], report["bare"]
    rate = dellm["per_second"]
    section.lines += ["", *table(
        ["", "per second", "errors", "p50 ms", "p99 ms"],
        [[name, f"{r['per_second']:.0f}", str(r["errors"]), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}"]
         for name, r in (("DELLM queries (one math chunk, checked exactly)", dellm),
                         ("bare grpc.aio streams (4 messages each)", bare))]),
        "", f"{report['clients']} concurrent clients in {report['client_procs']} processes, {report['nodes']} "
            f"scripted nodes in their own processes, {report['seconds']:.0f} s measured. DELLM sustains "
            f"{rate:.0f} queries/s with {dellm['errors']} errors, {report['share_of_bare_rate']:.0%} of the bare "
            f"stream rate (target at least 300/s with zero errors: {met(rate >= 300 and not dellm['errors'])})."]
    section.figures.append(Figure(f"throughput, {report['clients']} clients, {report['nodes']} nodes",
                                  f"{rate:.0f} queries/s, {dellm['errors']} errors (bare gRPC: "
                                  f"{bare['per_second']:.0f}/s)", ">= 300/s, 0 errors",
                                  rate >= 300 and not dellm["errors"]))
    series = dellm.get("per_second_series")
    if series:
        def draw(axes: plt.Axes) -> None:
            axes.plot(range(1, len(series) + 1), series, "o-", markersize=3, label="DELLM answered queries")
            axes.axhline(300, color="grey", linestyle="--", label="target: 300/s")
            axes.set(xlabel="second of the measured window", ylabel="queries/s", ylim=(0, None),
                     title=f"Throughput over time, {report['clients']} clients")
            axes.legend()
        section.lines += ["", plot("throughput.png", draw)]


def commits(section: Section, report: Report) -> None:
    """The same two benchmarks at each commit of the hot-path work: what each change bought."""
    if not provenance(section, report):
        return
    rows = []
    for row in report["rows"]:
        overhead, throughput = row["bench_overhead"], row["bench_throughput"]
        if "error" in overhead or "error" in throughput:
            rows.append([f"`{row['commit']}`", row["subject"], "run failed", "", ""])
            continue
        rows.append([f"`{row['commit']}`", row["subject"].split(":")[0][:110],
                     f"{overhead['dellm_ms']['p50']:.2f} ms ({overhead['ratio_p50']:.1f}x bare)",
                     f"{throughput['dellm']['per_second']:.0f}/s ({throughput['dellm']['errors']} errors)",
                     f"{throughput['bare']['per_second']:.0f}/s"])
    section.lines += ["", *table(["commit", "change", "overhead: DELLM p50", "throughput", "bare gRPC rate, same run"],
                                 rows)]

    def draw(axes: plt.Axes) -> None:
        good = [r for r in report["rows"] if "error" not in r["bench_throughput"]]
        axes.bar(range(len(good)), [r["bench_throughput"]["dellm"]["per_second"] for r in good])
        axes.axhline(300, color="grey", linestyle="--", label="target: 300/s")
        axes.set_xticks(range(len(good)), [r["commit"] for r in good], rotation=30, fontsize=8)
        axes.set(ylabel="queries/s", title="Throughput at each commit (64 clients, 20 instant nodes)")
        axes.legend()
    section.lines += ["", plot("commits.png", draw)]


def token_pace(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    node, client = report["median_at_node"], report["median_at_client"]
    kept = client / node
    section.lines += ["", *table(["round", "tokens/s at the node", "tokens/s at the client"],
                                 [[str(i + 1), f"{a:.1f}", f"{b:.1f}"] for i, (a, b) in enumerate(
                                     zip(report["tokens_per_s_at_node"], report["tokens_per_s_at_client"],
                                         strict=True))]),
                      "", f"Medians: {node:.1f} at the node, {client:.1f} at the client ({kept:.0%}; target: the "
                          f"coordinator does not slow the node, taken as at least 95 %: {met(kept >= 0.95)})."]
    section.figures.append(Figure("token pace: client / node tokens per second", f"{client:.1f} / {node:.1f}",
                                  ">= 95 %", kept >= 0.95))


def seed_query(section: Section, network: Report | None, alone: Report | None, template: Report | None,
               cold: Report | None = None) -> None:
    rows = []
    for label, report in (("DELLM: 3 llama.cpp nodes + model synthesis", network),
                          ("DELLM: the same, a fresh network each run (`make demo`)", cold),
                          ("DELLM: the same, template synthesis", template),
                          ("one llama.cpp node answering the whole query alone", alone)):
        if report is None or not provenance(section, report):
            continue
        median = report["median"]
        rows.append([label, f"{median['time_to_first_answer_token_s']:.2f}", f"{median['total_s']:.2f}",
                     " ".join(str(report["runs"][-1]["answer"]).split())[:160]])
    if rows:
        section.lines += ["", *table(["run (median of the runs)", "first answer token s", "total s",
                                      "answer (last run, first 160 characters)"], rows)]
    if network is not None and "error" not in network:
        total = network["median"]["total_s"]
        section.figures.append(Figure("seed query on 3 real nodes, total", f"{total:.2f} s", "< 5 s", total < 5))
    if cold is not None and "error" not in cold:
        total = cold["median"]["total_s"]
        section.figures.append(Figure("seed query, fresh network (make demo), total", f"{total:.2f} s", "< 3 s",
                                      total < 3))
    if alone is not None and "error" not in alone:
        section.figures.append(Figure("seed query, one node alone, total", f"{alone['median']['total_s']:.2f} s"))


# --- issues 11 and 13: a portable build, and answers the network can stand behind -------------------------


def fmt(value: object) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def llama_build(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    rows = []
    for label, build in report["builds"].items():
        rate, ttft = build.get("tokens_per_s", {}), build.get("ttft_s", {})
        rows.append([label, "yes" if build.get("amx") else "no", fmt(rate.get("median")), fmt(rate.get("max")),
                     fmt(ttft.get("median")), str(len(build.get("runs", []))), "; ".join(build.get("failures", []))])
        if isinstance(rate.get("median"), int | float):
            section.figures.append(Figure(f"llama.cpp build {label}: {report['model']} tokens/s (median)",
                                          f"{rate['median']:.1f}", "no AMX", not build.get("amx")))
    section.lines += ["", *table(["build", "AMX", "tokens/s median", "tokens/s best", "first token s (median)",
                                  "runs", "failures"], rows)]


def compound(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    summary, targets = report["summary"], report["targets"]
    consensus = summary["consensus"]
    section.lines += ["", f"Network: {report['setup']}.", "",
                      *table(["kind", "queries", "fully correct"],
                             [[kind, str(v["queries"]), f"{v['correct']} ({v['accuracy']:.0%})"]
                              for kind, v in summary["per_kind"].items()]),
                      "", f"Unanimous consensus: {consensus['unanimous_rate']:.0%} of the chunks with two or more "
                          f"votes ({consensus['unanimous_share_of_all_chunks']:.0%} of all chunks). Latency through "
                          f"`dellm ask`: p50 {summary['latency_p50_s']:.2f} s, p95 {summary['latency_p95_s']:.2f} s."]
    accuracy = summary["accuracy"]
    section.figures += [
        Figure("compound queries fully correct", f"{summary['fully_correct']}/{summary['queries']} ({accuracy:.0%})",
               f">= {targets['accuracy_min']:.0%}", accuracy >= targets["accuracy_min"]),
        Figure("compound queries unanimous consensus", f"{consensus['unanimous_rate']:.0%}",
               f"> {targets['unanimous_rate_over']:.0%}", consensus["unanimous_rate"] > targets["unanimous_rate_over"]),
        Figure("compound queries p50 / p95", f"{summary['latency_p50_s']:.2f} / {summary['latency_p95_s']:.2f} s",
               f"< {targets['latency_p50_s_under']:.0f} / {targets['latency_p95_s_under']:.0f} s",
               summary["latency_p50_s"] < targets["latency_p50_s_under"]
               and summary["latency_p95_s"] < targets["latency_p95_s_under"]),
    ]
    failures = report.get("failures") or []
    if failures:
        section.lines += ["", "Failures:", ""]
        for failure in failures[:12]:
            text = " ".join(str(failure.get("answer", "")).split())[:160]
            section.lines.append(f"- {failure.get('query', '')!r}: {text!r} (missing {failure.get('missing', [])})")


def prompt_cache(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    rows = [[label, f"{report[key]['ttft_median_s']:.3f}", f"{report[key]['ttft_p95_s']:.3f}",
             f"{report[key]['total_s']:.1f}"]
            for label, key in (("prompt prefix kept (default)", "cache_on"), ("context reset before every request",
                                                                             "cache_off")) if key in report]
    if rows:
        section.lines += ["", *table(["node", "time to first token, median s", "p95 s", "total s"], rows),
                          "", f"Load average during the run: {report.get('load_average_before', ['?'])[0]}."]
        ratio = report.get("ttft_median_ratio_on_to_off")
        if isinstance(ratio, int | float):
            section.figures.append(Figure("prompt KV cache: first-token time with / without",
                                          f"{report['cache_on']['ttft_median_s']:.2f} / "
                                          f"{report['cache_off']['ttft_median_s']:.2f} s"))


# --- earlier issues' benchmarks: shown from their reports, re-run with their own commands ---------


def discovery(section: Section, report: Report) -> None:
    if not provenance(section, report):
        return
    median, targets = report["median"], report["targets"]
    checks = [("process start to routable, scripted node", median["start_to_routable_scripted_s"],
               targets["start_to_routable_s"]),
              ("process start to routable, llama.cpp node", median["start_to_routable_llama_cpp_s"],
               targets["start_to_routable_s"]),
              ("SIGKILL to routed around", median["sigkill_to_routed_around_s"], targets["sigkill_to_routed_around_s"])]
    section.lines += ["", *table(["figure (median)", "seconds", "target"],
                                 [[name, f"{value:.2f}", f"< {target:.0f} s ({met(value < target)})"]
                                  for name, value, target in checks]), "", f"Health: {report['health']}."]
    section.figures += [Figure(f"discovery: {name}", f"{value:.2f} s", f"< {target:.0f} s", value < target)
                        for name, value, target in checks]


def fitness(section: Section, reports: list[tuple[str, Report]]) -> None:
    rows = []
    for name, report in reports:
        if not provenance(section, report):
            continue
        weights = report.get("weights") or {"latency": 0.7, "fitness": 0.3}
        rows.append([f"{report['network']} ({name})", f"{weights['latency']} / {weights['fitness']}",
                     str(report["queries"]), f"{report['accuracy_first_100']:.2f}",
                     f"{report['accuracy_last_100']:.2f}", f"{report['relative_gain']:+.0%}",
                     ", ".join(f"{n} {c}" for n, c in sorted(report["routing_share"]["last_100"].items(),
                                                            key=lambda item: -item[1])[:3]),
                     f"![](bench-results/{name}.png)" if (RESULTS / f"{name}.png").is_file() else ""])
        section.figures.append(Figure(f"fitness growth, {name}", f"{report['relative_gain']:+.0%}", ">= +20 %",
                                      report["relative_gain"] >= 0.2))
    section.lines += ["", *table(["network", "weights latency / fitness", "queries", "accuracy first 100",
                                  "last 100", "relative gain", "where the last 100 went", "plot"], rows)]
    scripted = [r for n, r in reports if n.startswith("fitness_scripted") and "error" not in r]
    if scripted:
        first = statistics.mean(r["accuracy_first_100"] for r in scripted)
        last = statistics.mean(r["accuracy_last_100"] for r in scripted)
        section.lines += ["", f"Mean over the {len(scripted)} test-double seeds: first 100 {first:.2f}, "
                              f"last 100 {last:.2f}, {last / first - 1:+.0%} relative."]


def gsm8k_baseline(section: Section, report: Report, where: str = "gsm8k50", figures: bool = False) -> None:
    """A paired GSM8K run: the table, the issue's three tests, and (``figures``: the newest held-out slice)
    those tests in the summary of every figure."""
    from dellm.client.bench.report import baseline_checks, baseline_table, baseline_verdict

    section.machines.add(describe_machine(report["machine"]))
    commands = sorted({run.get("command", "") for run in report.get("runs", {}).values()} - {""})
    section.lines += [
        "The strongest single model alone (no coordinator, greedy, its better single-sample prompt, all cores) "
        "against the network (one thread per node, word problems by self-consistency, "
        "`coordinator/pipeline/consistency.py`), on GSM8K problems "
        f"{report['slices']['evaluation'][0]}..{report['slices']['evaluation'][1] - 1}. Commands: "
        + "; ".join(f"`{c}`" for c in commands) + f". Every answer: `bench-results/{where}/results.json`.",
        "", baseline_table(report), "", *baseline_verdict(report)]
    if not figures:
        return
    span = f"{report['slices']['evaluation'][0]}..{report['slices']['evaluation'][1] - 1}"
    for check in baseline_checks(report):
        section.figures += [
            Figure(f"GSM8K {span}: network - best single node alone", f"{check.gain_points:+.1f} points",
                   ">= +10 points", check.gain_points >= 10),
            Figure(f"GSM8K {span}: network accuracy", f"{100 * check.accuracy:.0f}%", ">= 60%",
                   check.accuracy >= 0.6)]
        if check.p50_ratio is not None:
            section.figures.append(Figure(f"GSM8K {span}: network p50 / node alone p50", f"{check.p50_ratio:.2f}x",
                                          "<= 2x", check.p50_ratio <= 2))


def gsm8k_samples(section: Section, report: Report) -> None:
    """Problems 50..99 at 1 and 3 answers per word problem (``gsm8k_samples``) beside the paired run's 5
    answers and the node alone (``gsm8k50c``)."""
    from dellm.client.bench.report import baseline_table

    paired = load("gsm8k50c/results.json") or {"summary": {}, "runs": {}}
    merged = {**report, "summary": {**paired["summary"], **report["summary"]},
              "runs": {**paired.get("runs", {}), **report.get("runs", {})}}
    section.machines.add(describe_machine(report["machine"]))
    section.lines += [
        "The same network and slice at 1, 3 and 5 answers per word problem (1: the program alone; 3: worked "
        "steps, a program, plan-and-solve; 5: and a `solution()` function and one sample). The 1- and 3-answer "
        f"runs are not paired with the node alone: `{report['command']}`. The 5-answer row and the node alone "
        "are the paired run above. Every answer: `bench-results/gsm8k_samples/results.json`.",
        "", baseline_table(merged)]


def gsm8k(section: Section, report: Report) -> None:
    section.machines.add(describe_machine(report["machine"]))
    section.lines += [f"`{report['command']}` on {describe_machine(report['machine'])} (results, every answer: "
                      "`bench-results/gsm8k/results.json`; `summary.md`)."]
    labels = {"single": "(a) one node alone", "network": "(b) DELLM, redundancy + vote",
              "train": "(learning pass, labelled problems)", "learned": "(c) DELLM after learning"}
    rows = []
    for key, label in labels.items():
        s = report["summary"].get(key)
        if s is None:
            continue
        consensus = "n/a" if s["consensus_rate"] is None else f"{s['consensus_rate']:.0%}"
        rows.append([label, "; ".join(n.split(" (")[0].removeprefix("bench-") for n in s["nodes"]),
                     f"{s['correct']}/{s['questions']} ({s['accuracy']:.1%})", consensus,
                     f"{s['latency_p50_s']:.1f} / {s['latency_p95_s']:.1f}"])
    section.lines += ["", *table(["run", "nodes", "accuracy", "unanimous consensus", "latency p50 / p95 s"], rows)]
    if (RESULTS / "gsm8k" / "accuracy.png").is_file():
        section.lines += ["", "![accuracy](bench-results/gsm8k/accuracy.png)"]
    network = report["summary"].get("network")
    if network:
        section.figures += [
            Figure("GSM8K accuracy, DELLM network", f"{network['accuracy']:.1%}", "> 85 % (seed)",
                   network["accuracy"] > 0.85),
            Figure("GSM8K unanimous consensus", f"{network['consensus_rate']:.0%}", "> 70 % (seed)",
                   network["consensus_rate"] > 0.7),
        ]


def chaos(section: Section, reports: list[tuple[str, Report]]) -> None:
    rows = []
    for name, report in reports:
        if not provenance(section, report):
            continue
        counts = report["counts"]
        latency = report["latency_s"]
        rows.append([f"{report['scenario']} ({name})", f"{report['clients']} / {report['nodes']}",
                     str(counts["answered"]), str(counts["failed"]), str(counts["lost"]),
                     f"{report['qps_answered']:.1f}", f"{latency['p50']:.2f} / {latency['p99']:.2f}",
                     str(len(report["faults"]))])
        section.figures.append(Figure(f"chaos {report['scenario']} ({name}): queries lost", str(counts["lost"]),
                                      "0", counts["lost"] == 0))
    section.lines += ["", *table(["scenario", "clients / nodes", "answered", "failed with a status", "lost",
                                  "answered/s", "p50 / p99 s", "faults injected"], rows)]


# --- the document -----------------------------------------------------------------------------


def sections() -> list[Section]:
    built: list[Section] = []

    def add(title: str, key: str, render: Callable[[Section], None]) -> None:
        section = Section(title, key)
        render(section)
        if section.lines:
            built.append(section)

    def one(name: str, renderer: Callable[[Section, Report], None]) -> Callable[[Section], None]:
        def render(section: Section) -> None:
            report = load(name)
            if report is not None:
                renderer(section, report)
        return render

    def many(names: list[str], renderer: Callable[[Section, list[tuple[str, Report]]], None]
             ) -> Callable[[Section], None]:
        def render(section: Section) -> None:
            reports = [(Path(n).stem, r) for n in names if (r := load(n)) is not None]
            if reports:
                renderer(section, reports)
        return render

    add("Overhead against bare gRPC (issue 6)", "overhead", one("overhead.json", overhead))
    add("Parallel speedup (issue 6)", "parallel", one("parallel.json", parallel))
    add("Routing at scale (issue 6)", "routing_scale", one("routing_scale.json", routing))
    add("Throughput (issue 6)", "throughput", one("throughput.json", throughput))
    add("Hot path: what each change bought (issue 6)", "commits", one("commits.json", commits))
    add("Token streaming pace (issue 6)", "token_pace", one("token_pace.json", token_pace))
    add("Real models: the seed's query (issues 2 and 6)", "seed_query",
        lambda s: seed_query(s, load("seed_query.json"), load("seed_query_alone.json"),
                             load("seed_query_template.json"), load("seed_query_cold.json")))
    add("Discovery and membership over real mDNS (issue 3)", "discovery", one("discovery.json", discovery))
    add("Routing that learns (issue 4)", "fitness", many(
        ["fitness_scripted_seed1.json", "fitness_scripted_seed2.json", "fitness_scripted_seed3.json",
         "fitness_real.json", "fitness_real_w37.json"], fitness))
    add("GSM8K: one node against the network (issue 4)", "gsm8k", one("gsm8k/results.json", gsm8k))
    add("GSM8K: the best single node against the network with self-consistency (issue 13)", "gsm8k_baseline",
        one("gsm8k50/results.json", gsm8k_baseline))
    add("GSM8K, problems 50..99: four greedy methods, agreement across families (issue 13)", "gsm8k_methods",
        one("gsm8k50c/results.json", lambda s, r: gsm8k_baseline(s, r, "gsm8k50c")))
    add("GSM8K, problems 100..149, held out: worked steps re-run, sign slips (issue 13)", "gsm8k_held_out",
        one("gsm8k100/results.json", lambda s, r: gsm8k_baseline(s, r, "gsm8k100")))
    add("GSM8K, problems 150..199, held out (issue 13)", "gsm8k_held_out_150",
        one("gsm8k150/results.json", lambda s, r: gsm8k_baseline(s, r, "gsm8k150")))
    add("GSM8K, problems 200..249, held out: a plausible program alone, more answers only in doubt (issue 13)",
        "gsm8k_held_out_200", one("gsm8k200/results.json", lambda s, r: gsm8k_baseline(s, r, "gsm8k200", figures=True)))
    add("GSM8K, problems 50..99, at 1, 3 and 5 answers (issue 13)", "gsm8k_samples",
        one("gsm8k_samples/results.json", gsm8k_samples))
    add("Portable llama.cpp builds (issue 11)", "llama_build", one("llama_build.json", llama_build))
    add("Compound queries through dellm ask (issue 13)", "compound", one("compound_queries.json", compound))
    add("Prompt KV cache (issue 13)", "prompt_cache", one("prompt_cache.json", prompt_cache))
    add("HTTP gateway against dellm ask (issue 15)", "gateway", one("gateway.json", gateway))
    add("Faults and load (issue 5)", "chaos", many(
        ["chaos_calm.json", "chaos_kill.json", "chaos_all.json", "load_64_clients.json"], chaos))
    return built


def render(built: list[Section]) -> str:
    machines = sorted({m for s in built for m in s.machines})
    out = ["# Benchmarks", "",
           "Generated by `python scripts/bench_markdown.py` from the JSON reports in `bench-results/`; do not edit",
           "it by hand (the notes under each section live in `bench-results/notes/`). `make bench` re-runs the",
           "performance suite (issue 6) and regenerates this file; the other sections are re-run with the",
           "command shown in each. Everything shares one machine: coordinator, nodes, models and clients on",
           "the same cores, over loopback.", "",
           "Machines: " + "; ".join(machines) + ".", "", "## Every figure beside its target", "",
           *table(["figure", "measured", "target", ""],
                  [[f.name, f.measured, f.target, "" if f.met is None else met(f.met)]
                   for s in built for f in s.figures]), ""]
    for section in built:
        out += [f"## {section.title}", "", *section.lines, ""]
        notes = RESULTS / "notes" / f"{section.key}.md"
        if notes.is_file():
            out += [notes.read_text().strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    built = sections()
    if not built:
        print(f"no reports in {RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    args.out.write_text(render(built))
    print(f"wrote {args.out} ({len(built)} sections, {sum(len(s.figures) for s in built)} figures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
