"""The outputs of ``dellm bench gsm8k``, rendered from its results alone: ``results.json``, ``summary.md``
(with the table the command prints) and the ``accuracy.png`` plot.

Everything here reads the results mapping (what ``results.json`` holds), so a saved run can be
rendered again without running anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PHASE_TITLES = {
    "single": "(a) one node alone",
    "network": "(b) DELLM, redundancy + vote",
    "learned": "(c) DELLM after learning",
    "train": "training slice (labels sent)",
}


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


def summary_markdown(results: Mapping[str, Any]) -> str:
    config = results["config"]
    slices = results["slices"]
    parts = [
        "# GSM8K: one node vs the DELLM network", "",
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
    return "\n".join(parts)


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


def write_outputs(results: Mapping[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(results), encoding="utf-8")
    try:
        write_plot(results, out / "accuracy.png")
    except ImportError as exc:
        log.warning("matplotlib is not installed (%s); no plot written", exc)
