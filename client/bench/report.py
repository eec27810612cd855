"""The outputs of ``dellm bench gsm8k``, rendered from its results alone: ``results.json``, ``summary.md``
(with the table the command prints) and the ``accuracy.png`` plot.

Everything here reads the results mapping (what ``results.json`` holds), so a saved run can be
rendered again without running anything.

Runs are added to a folder's ``results.json``, not written over it: a run replaces only the phases it
measured (their summaries, records and ``runs`` entries), so the baseline, each sample count and the
(a)/(b)/(c) runs can be measured by separate commands and reported together (``merge_results``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dellm.client.bench.scoring import ALONE_PREFIX, SAMPLES_PREFIX

log = logging.getLogger(__name__)

PHASE_TITLES = {
    "single": "(a) one node alone",
    "network": "(b) DELLM, redundancy + vote",
    "learned": "(c) DELLM after learning",
    "train": "training slice (labels sent)",
}


ALONE_TITLES = {"cot": "chain of thought", "program": "program + sandbox", "function": "solution() function + sandbox"}
LEGACY_PHASES = ("single", "network", "train", "learned")


def phase_title(phase: str) -> str:
    """A phase's name in tables: (a)/(b)/(c), "one node alone, <prompt>" or "network, <n> samples"."""
    if phase in PHASE_TITLES:
        return PHASE_TITLES[phase]
    if phase.startswith(ALONE_PREFIX):
        kind = phase.removeprefix(ALONE_PREFIX)
        return f"one node alone, {ALONE_TITLES.get(kind, kind)}"
    if phase.startswith(SAMPLES_PREFIX):
        samples, _, tag = phase.removeprefix(SAMPLES_PREFIX).partition("_")
        return f"network, {samples} sample{'s' if samples != '1' else ''}" + (f" ({tag})" if tag else "")
    return phase


def _samples_order(phase: str) -> tuple[str, int]:
    """Sampled phases ordered by network tag, then by samples ("samples_3" before "samples_5_big")."""
    samples, _, tag = phase.removeprefix(SAMPLES_PREFIX).partition("_")
    return tag, int(samples) if samples.isdigit() else 0


def baseline_phase(results: Mapping[str, Any]) -> str | None:
    """The best single node alone: the alone phase with the most right answers (then the lower p50)."""
    alone = [(p, s) for p, s in results["summary"].items() if p.startswith(ALONE_PREFIX) and s["questions"]]
    if not alone:
        return None
    return min(alone, key=lambda item: (-item[1]["correct"], item[1]["latency_p50_s"] or float("inf")))[0]


def _ci(s: Mapping[str, Any]) -> str:
    ci = s.get("accuracy_ci95")
    return "n/a" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def baseline_table(results: Mapping[str, Any]) -> str:
    """The single node alone against the network at each sample count: accuracy with its 95 % Wilson
    interval, latency p50/p95, and each run's p50 over the baseline's."""
    summary = results["summary"]
    phases = sorted((p for p in summary if p.startswith(ALONE_PREFIX)), key=lambda p: p) + sorted(
        (p for p in summary if p.startswith(SAMPLES_PREFIX)), key=_samples_order)
    if not phases:
        return ""
    base = baseline_phase(results)
    base_p50 = summary[base]["latency_p50_s"] if base else None
    lines = [
        "| run | nodes | accuracy | 95% CI (Wilson) | correct | errors | p50 (s) | p95 (s) | p50 / baseline p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        s = summary[phase]
        nodes = ", ".join(n.split(" ")[0].removeprefix("bench-") for n in s["nodes"]) or "-"
        ratio = ("n/a" if not base_p50 or s["latency_p50_s"] is None
                 else f"{s['latency_p50_s'] / base_p50:.2f}x")
        title = phase_title(phase) + (" **(baseline)**" if phase == base else "")
        lines.append(f"| {title} | {nodes} | {_pct(s['accuracy'])} | {_ci(s)} | {s['correct']}/{s['questions']} | "
                     f"{s['errors']} | {_secs(s['latency_p50_s'])} | {_secs(s['latency_p95_s'])} | {ratio} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class BaselineCheck:
    """One network run against the best single node alone: the issue's three tests' figures."""

    phase: str
    gain_points: float  # accuracy over the baseline's, in points (+10 to meet)
    accuracy: float  # absolute (0.6 to meet)
    p50_ratio: float | None  # p50 over the baseline's (2 to meet); None when either p50 is missing
    ratio_how: str  # how the ratio was taken: standalone, or paired problem by problem with the baseline


def baseline_checks(results: Mapping[str, Any]) -> list[BaselineCheck]:
    """The issue's three tests for each network run: +10 points over the baseline, 60 % absolute, p50 <= 2x."""
    summary = results["summary"]
    base = baseline_phase(results)
    if base is None:
        return []
    b = summary[base]
    checks = []
    for phase in sorted((p for p in summary if p.startswith(SAMPLES_PREFIX)), key=_samples_order):
        s = summary[phase]
        if s["accuracy"] is None or b["accuracy"] is None:
            continue
        ratio = (s["latency_p50_s"] / b["latency_p50_s"]) if s["latency_p50_s"] and b["latency_p50_s"] else None
        paired = results.get("paired_latency", {}).get(phase)
        how = "the baseline's"
        if paired is not None and paired["alone"] == base:  # asked problem by problem with the baseline itself:
            # the fair ratio on a busy machine (paired with another alone prompt, it is not the baseline's)
            ratio, how = paired["p50_ratio"], f"{paired['alone']}'s, paired over {paired['pairs']} problems"
        gain = round(100 * (s["accuracy"] - b["accuracy"]), 6)  # 31/50 - 26/50 is 10 points, not 9.999999
        checks.append(BaselineCheck(phase, gain, s["accuracy"], ratio, how))
    return checks


def baseline_verdict(results: Mapping[str, Any]) -> list[str]:
    """``baseline_checks`` as lines of text."""
    out = []
    for c in baseline_checks(results):
        checks = [f"{c.gain_points:+.1f} points over the baseline ({'meets' if c.gain_points >= 10 else 'misses'} +10)",
                  f"{_pct(c.accuracy)} absolute ({'meets' if c.accuracy >= 0.6 else 'misses'} 60%)",
                  "p50 ratio n/a" if c.p50_ratio is None else
                  f"p50 {c.p50_ratio:.2f}x {c.ratio_how} ({'meets' if c.p50_ratio <= 2 else 'misses'} <= 2x)"]
        out.append(f"- {phase_title(c.phase)}: " + "; ".join(checks) + ".")
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary_table(results: Mapping[str, Any]) -> str:
    """The markdown table of the three runs (and a line for the training slice)."""
    lines = [
        "| run | nodes | accuracy | correct | errors | unanimous consensus | latency p50 (s) | latency p95 (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in ("single", "network", "learned"):
        s = results["summary"].get(phase)
        if s is None:
            continue
        consensus = (f"{_pct(s['consensus_rate'])} ({s['unanimous_chunks']}/{s['chunks_with_2plus_answers']})"
                     if s["chunks_with_2plus_answers"] else "n/a (one answer per chunk)")
        nodes = ", ".join(n.split(" ")[0].removeprefix("bench-") for n in s["nodes"]) or "-"
        lines.append(f"| {PHASE_TITLES[phase]} | {nodes} | {_pct(s['accuracy'])} | {s['correct']}/{s['questions']} | "
                     f"{s['errors']} | {consensus} | {_secs(s['latency_p50_s'])} | {_secs(s['latency_p95_s'])} |")
    return "\n".join(lines)


def baseline_markdown(results: Mapping[str, Any]) -> list[str]:
    """The section on the single node alone against the self-consistency network (empty without those runs)."""
    table = baseline_table(results)
    if not table:
        return []
    summary = results["summary"]
    parts = ["## The best single node alone vs the network with self-consistency", "",
             "The single node runs alone: one node process, no coordinator, greedy, one sample, asked directly "
             "with each of its natural prompts (chain of thought; the coordinator's program prompt with the program "
             "run in the same sandbox); the better prompt is the baseline. The network runs the coordinator's "
             "default flags (synthesis off) with 1, 3 or 5 samples per word problem. Latency is the client's "
             "wall clock per problem.", "", table, ""]
    verdict = baseline_verdict(results)
    if verdict:
        parts += ["Against the issue's targets:", "", *verdict, ""]
    runs = results.get("runs", {})
    for phase in [p for p in summary if p.startswith((ALONE_PREFIX, SAMPLES_PREFIX))]:
        s, meta = summary[phase], runs.get(phase, {})
        line = f"**{phase_title(phase)}**"
        if meta:
            line += (f": `{meta.get('command') or 'run_gsm8k_bench(...)'}`; problems {meta['slice'][0]}.."
                     f"{meta['slice'][1] - 1}; setup {json.dumps(meta.get('setup', {}), sort_keys=True)}; "
                     f"load average before/after {meta.get('loadavg_before')} / {meta.get('loadavg_after')}; "
                     f"wall {meta.get('wall_s')} s")
        per_node = "; ".join(f"{name} {st['correct']}/{st['answers']} right" + (
            f" ({st['failed']} failed)" if st["failed"] else "") for name, st in s["per_node"].items())
        line += f". Per node: {per_node}" if per_node else ""
        if phase.startswith(SAMPLES_PREFIX):
            line += f"; at least one sample right on {s['any_node_right']}/{s['questions']}"
        if s["errors"]:
            kinds = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in s["errors_by_kind"].items())
            line += f"; errors: {kinds}"
        parts += [line + ".", ""]
    return parts


def summary_markdown(results: Mapping[str, Any]) -> str:
    parts = ["# GSM8K: one node vs the DELLM network", "", *baseline_markdown(results)]
    if any(p in results["summary"] for p in LEGACY_PHASES):
        if len(parts) > 2:
            parts += ["## (a) one node, (b) the network, (c) the network after learning", ""]
        parts += legacy_markdown(results)
    return "\n".join(parts)


def legacy_markdown(results: Mapping[str, Any]) -> list[str]:
    config = results["config"]
    slices = results["slices"]
    parts = [
        f"Command: `{results['command'] or 'run_gsm8k_bench(...)'}`  ",
        f"Evaluation: problems {slices['evaluation'][0]}..{slices['evaluation'][1] - 1} of `{config['data']}`; "
        f"training (c): problems {slices['training'][0]}..{slices['training'][1] - 1} (labels sent).  ",
        f"Machine: {results['machine'].get('cpu_count')} cores ({results['machine'].get('cpu_model', '?')}), no GPU; "
        f"load average before/after {results['machine']['loadavg_before']} / {results['machine']['loadavg_after']}.  ",
        f"max_tokens {config['max_tokens']}, redundancy {config['redundancy']} in (b)/(c), threads per node "
        f"{config['threads_single']} in (a), {config['threads_network']} in (b)/(c). "
        f"Wall time {results['wall_s']:.0f} s.",
    ]
    if results.get("interrupted"):
        parts.append("\n**Interrupted**: the figures cover only the questions answered before Ctrl-C.")
    if results.get("failure"):
        parts.append(f"\n**Stopped by a failure**: {results['failure']}")
    parts += ["", summary_table(results), ""]
    for phase in ("single", "network", "train", "learned"):
        s = results["summary"].get(phase)
        if s is None:
            continue
        parts.append(f"**{PHASE_TITLES[phase]}**: "
                     + "; ".join(f"{name} {st['correct']}/{st['answers']} right" + (
                         f" ({st['failed']} failed)" if st["failed"] else "") for name, st in s["per_node"].items()))
        if s["final_chunk_disagreements"]:
            parts[-1] += (f"; nodes disagreed on {s['final_chunk_disagreements']} question(s), the vote was right on "
                          f"{s['vote_right_on_disagreement']}")
        parts[-1] += f"; at least one node right on {s['any_node_right']}/{s['questions']}"
        if s["errors"]:
            kinds = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in s["errors_by_kind"].items())
            parts[-1] += f"; errors: {kinds}"
        parts[-1] += ".  "
        if phase == "train":
            parts[-1] += "(The label decides the vote here, so this slice's accuracy measures nothing.)  "
        fitness = ", ".join(f"{f['name'].removeprefix('bench-')} {f['fitness']:.3f}" for f in s["fitness_at_end"])
        if fitness:
            parts.append(f"fitness at the end: {fitness}.")
        parts.append("")
    return parts


def write_plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in ("single", "network", "learned") if p in results["summary"]]
    if not phases:
        return
    summaries = [results["summary"][p] for p in phases]
    titles = [PHASE_TITLES[p].replace(", ", ",\n").replace(" after", "\nafter") for p in phases]
    colors = ["#888888", "#1f77b4", "#2ca02c"][: len(phases)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    accuracy = [100 * (s["accuracy"] or 0.0) for s in summaries]
    bars = left.bar(titles, accuracy, color=colors)
    for bar, s in zip(bars, summaries, strict=True):
        left.annotate(f"{s['correct']}/{s['questions']}" + (f"\n{s['errors']} err" if s["errors"] else ""),
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=9)
    left.set_ylabel("accuracy (%)")
    left.set_ylim(0, 110)
    left.set_title("GSM8K accuracy")
    x = range(len(phases))
    p50 = [s["latency_p50_s"] or 0.0 for s in summaries]
    p95 = [s["latency_p95_s"] or 0.0 for s in summaries]
    right.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#1f77b4")
    right.bar([i + 0.2 for i in x], p95, width=0.4, label="p95", color="#ff7f0e")
    right.set_xticks(list(x), titles)
    right.set_ylabel("seconds per question")
    right.set_title("latency")
    right.legend()
    slices = results["slices"]["evaluation"]
    fig.suptitle(f"DELLM on GSM8K problems {slices[0]}..{slices[1] - 1} "
                 f"({results['machine'].get('cpu_count')} CPU cores, no GPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_results(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """``new`` added to ``old``: the phases ``new`` measured replace old's (summary, records, runs); old's other
    phases stay. The top-level description (command, config, slices, machine) is of the (a)/(b)/(c) runs:
    it comes from ``new`` only when ``new`` measured one of them."""
    phases = set(new["summary"])
    legacy_new = any(p in LEGACY_PHASES for p in phases)
    merged = dict(new) if legacy_new else dict(old)
    merged["summary"] = {**{p: s for p, s in old.get("summary", {}).items() if p not in phases}, **new["summary"]}
    merged["records"] = [r for r in old.get("records", []) if r["phase"] not in phases] + list(new["records"])
    merged["runs"] = {**{p: m for p, m in old.get("runs", {}).items() if p not in phases}, **new.get("runs", {})}
    merged["paired_latency"] = {**{p: m for p, m in old.get("paired_latency", {}).items() if p not in phases},
                                **new.get("paired_latency", {})}
    if not legacy_new:
        merged["code"] = {**old.get("code", {}), **new.get("code", {})}
        merged["interrupted"] = new.get("interrupted", False) or old.get("interrupted", False)
        merged["failure"] = new.get("failure") or old.get("failure", "")
    return merged


def write_outputs(results: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Add ``results`` to ``out/results.json`` (see ``merge_results``), render ``summary.md`` and the plot
    from the whole; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and old.get("benchmark") == "gsm8k" and "summary" in old:
        results = merge_results(old, results)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    try:
        write_plot(results, out / "accuracy.png")
    except ImportError as exc:
        log.warning("matplotlib is not installed (%s); no plot written", exc)
    return dict(results)
