"""``dellm bench gsm8k``: refusals, label parsing, the summary maths, and one tiny run on test-double nodes."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from dellm.client import cli
from dellm.client.bench import (
    BenchConfig,
    BenchError,
    QuestionRecord,
    count_problems,
    error_kind,
    is_correct,
    load_problems,
    parse_label,
    percentile,
    run_gsm8k_bench,
    summarize,
    summary_table,
    validate_config,
)

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
FIXTURES = REPO / "tests" / "fixtures"
TINY = FIXTURES / "gsm8k_tiny.jsonl"
SCRIPTS = {"scripted-strong": FIXTURES / "bench_strong.toml", "scripted-weak": FIXTURES / "bench_weak.toml"}
needs_gsm8k = pytest.mark.skipif(not GSM8K.is_file(), reason=f"GSM8K test set not at {GSM8K}")


def scripted_config(tmp_path: Path, **overrides: object) -> BenchConfig:
    values: dict[str, object] = dict(
        n=2, offset=0, train_n=2, data=TINY, single_model="scripted-weak",
        models=("scripted-strong", "scripted-weak"), out=tmp_path / "out", backend="scripted", scripts=SCRIPTS,
        question_timeout_s=30.0,
    )
    values.update(overrides)
    return BenchConfig(**values)  # type: ignore[arg-type]


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n": 0}, "--n must be at least 1"),
        ({"n": -3}, "--n must be at least 1"),
        ({"offset": -1}, "--offset must be 0 or more"),
        ({"offset": 4}, "beyond the 4 problems"),
        ({"offset": 3}, "needs problems up to 5"),
        ({"train_n": 5}, "training slice"),
        ({"train_n": -1}, "--train-n must be 0 or more"),
        ({"max_tokens": 4}, "--max-tokens"),
        ({"threads": 0}, "--threads"),
        ({"models": ()}, "at least one model"),
        ({"models": ("scripted-weak", "scripted-weak")}, "names a model twice"),
        ({"redundancy": 3}, "--redundancy must be between 1 and"),
        ({"single_model": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"models": ("scripted-strong", "no-such-model")}, "unknown model 'no-such-model'"),
    ],
)
def test_nonsense_parameters_are_refused(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BenchError, match=re.escape(message)):
        validate_config(scripted_config(tmp_path, **overrides))


def test_missing_data_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="data file not found"):
        validate_config(scripted_config(tmp_path, data=tmp_path / "nope.jsonl"))


def test_unknown_real_model_is_refused_with_the_catalogue(tmp_path: Path) -> None:
    config = BenchConfig(data=TINY, n=1, train_n=0, single_model="no-such-model", out=tmp_path)
    with pytest.raises(BenchError, match=r"unknown or unavailable model 'no-such-model'.*catalogue"):
        validate_config(config)


def test_valid_parameters_pass(tmp_path: Path) -> None:
    assert validate_config(scripted_config(tmp_path)) == 4


@needs_gsm8k
def test_cli_refuses_with_a_message_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "gsm8k", "--n", "0", "--data", str(GSM8K), "--out", str(tmp_path)]) == 2
    assert "dellm bench: --n must be at least 1" in capsys.readouterr().err
    assert cli.main(["bench", "gsm8k", "--offset", "99999", "--data", str(GSM8K), "--out", str(tmp_path)]) == 2
    assert "beyond the 1319 problems" in capsys.readouterr().err
    assert cli.main(["bench", "gsm8k", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert cli.main(["bench", "gsm8k", "--models", "qwen2.5-coder-0.5b-instruct,not-a-model", "--data", str(GSM8K),
                     "--out", str(tmp_path)]) == 2
    assert "unknown or unavailable model 'not-a-model'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # refused before anything ran


# --- labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solution", "label"),
    [("2 + 2 = 4\n#### 4", "4"), ("so 1,234\n#### 1,234", "1234"), ("#### -7", "-7"), ("x\n#### 2.5 ", "2.5"),
     ("#### 1 ####  12,000", "12000"), ("#### $30", "30")],
)
def test_parse_label(solution: str, label: str) -> None:
    assert parse_label(solution) == label


@pytest.mark.parametrize("solution", ["no marker at all", "#### twelve", "####", "#### nan"])
def test_parse_label_refuses_non_numbers(solution: str) -> None:
    with pytest.raises(ValueError):
        parse_label(solution)


def _raw_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines() if line.strip()]


@needs_gsm8k
def test_labels_of_the_real_first_problems() -> None:
    rows = _raw_rows()
    problems = load_problems(GSM8K, 0, 5)
    assert [p.index for p in problems] == [0, 1, 2, 3, 4]
    for problem, row in zip(problems, rows, strict=False):
        assert problem.question == row["question"].strip()
        last_line = row["answer"].strip().splitlines()[-1]
        assert last_line.startswith("####")
        assert problem.label == last_line.removeprefix("####").strip()
        assert problem.value == float(problem.label)


@needs_gsm8k
def test_labels_with_commas_and_negatives_in_the_real_file() -> None:
    rows = _raw_rows()
    with_comma = next(i for i, r in enumerate(rows) if "," in r["answer"].rsplit("####", 1)[1])
    negative = next(i for i, r in enumerate(rows) if r["answer"].rsplit("####", 1)[1].strip().startswith("-"))
    for index in (with_comma, negative):
        (problem,) = load_problems(GSM8K, index, 1)
        raw = rows[index]["answer"].rsplit("####", 1)[1].strip()
        assert problem.index == index
        assert "," not in problem.label
        assert problem.value == float(raw.replace(",", ""))
    (negative_problem,) = load_problems(GSM8K, negative, 1)
    assert negative_problem.value < 0


@needs_gsm8k
def test_every_problem_of_the_real_file_has_a_numeric_label() -> None:
    assert count_problems(GSM8K) == len(load_problems(GSM8K, 0, 10_000)) == 1319


def test_load_problems_slices_do_not_overlap() -> None:
    evaluation = load_problems(TINY, 0, 2)
    training = load_problems(TINY, 2, 2)
    assert [p.index for p in evaluation] == [0, 1] and [p.index for p in training] == [2, 3]


def test_is_correct_compares_numbers_with_tolerance() -> None:
    assert is_correct(18.0, 18.0)
    assert is_correct(18.0000000001, 18.0)
    assert is_correct(-3.0, -3.0)
    assert not is_correct(18.5, 18.0)
    assert not is_correct(None, 18.0)


# --- summary maths ---------------------------------------------------------------------------------


def _vote(node: str, normalized: str, correct: bool, failed: bool = False) -> dict[str, object]:
    return {"node": node, "normalized": "" if failed else normalized, "correct": correct, "failed": failed}


def _record(index: int, correct: bool, latency: float, votes: list[dict[str, object]], unanimous: bool,
            error: str = "") -> QuestionRecord:
    return QuestionRecord("network", index, f"q{index}", "1", correct=correct, latency_s=latency, error=error,
                          chunks=[{"chunk_id": "c1", "unanimous": unanimous, "votes": votes}])


@pytest.mark.parametrize(
    ("message", "kind"),
    [("UNAVAILABLE: chunk c1 could not be answered; nodes tried: ab (None)", "no_usable_answer"),
     ("UNAVAILABLE: no nodes are available", "unavailable"), ("DEADLINE_EXCEEDED: slow", "deadline"),
     ("INTERNAL: boom", "other"), ("", "")],
)
def test_error_kind(message: str, kind: str) -> None:
    assert error_kind(message) == kind


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([float(x) for x in range(1, 21)], 95) == pytest.approx(19.05)
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0 and percentile([3.0, 1.0, 2.0], 100) == 3.0


# One percentile for every benchmark (the scripts import it too): linear between closest ranks, as numpy's
# default, q from 0 to 100. The p99 rows pin the definition against nearest rank on the sizes the scripts use.
_HUNDRED = [float(x) for x in range(1, 101)]
_THREE_HUNDRED = [float(x) for x in range(300, 0, -1)]  # unsorted on purpose


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([], 99, None),
        ([5.0], 0, 5.0),
        ([5.0], 99, 5.0),
        ([1.0, 2.0], 50, 1.5),  # the median of an even count: statistics.median, not the upper value
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 25, 1.75),
        ([1.0, 2.0, 3.0, 4.0], 75, 3.25),
        ([4.0, 4.0, 4.0, 9.0], 50, 4.0),  # ties
        ([3.0, 1.0, 2.0], 0, 1.0),
        ([3.0, 1.0, 2.0], 100, 3.0),
        ([-2.0, 0.0, 2.0], 50, 0.0),
        ([float(x) for x in range(1, 21)], 95, 19.05),
        (_HUNDRED, 99, 99.01),  # nearest rank (int(0.99 * 100)) would give 100.0
        (_THREE_HUNDRED, 99, 297.01),  # nearest rank (int(0.99 * 300)) would give 298.0
        (_THREE_HUNDRED, 50, 150.5),
    ],
)
def test_percentile_table(values: list[float], q: float, expected: float | None) -> None:
    result = percentile(values, q)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if values and q == 50:
        assert result == pytest.approx(statistics.median(values), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("q", [-1, 100.5, 101])
def test_percentile_refuses_q_outside_0_to_100(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0, 2.0], q)


def test_summary_accuracy_consensus_and_latency() -> None:
    records = [
        # both nodes agree and are right
        _record(0, True, 2.0, [_vote("a", "num:7", True), _vote("b", "num:7", True)], unanimous=True),
        # they disagree; the vote picks the right one
        _record(1, True, 4.0, [_vote("a", "num:60", True), _vote("b", "num:17", False)], unanimous=False),
        # they disagree; the vote picks the wrong one
        _record(2, False, 6.0, [_vote("a", "num:5", True), _vote("b", "num:9", False)], unanimous=False),
        # one node failed: a lone answer is not a consensus figure
        _record(3, False, 8.0, [_vote("a", "num:3", False), _vote("b", "", False, failed=True)], unanimous=True),
        # the question errored: counts against accuracy, not in latency
        QuestionRecord("network", 4, "q4", "1", error="UNAVAILABLE: no nodes", latency_s=0.1),
    ]
    s = summarize(records)
    assert (s["questions"], s["answered"], s["errors"], s["correct"]) == (5, 4, 1, 2)
    assert s["errors_by_kind"] == {"unavailable": 1}
    assert s["accuracy"] == pytest.approx(0.4)
    assert (s["chunks_with_2plus_answers"], s["unanimous_chunks"]) == (3, 1)
    assert s["consensus_rate"] == pytest.approx(1 / 3)
    assert (s["final_chunk_disagreements"], s["vote_right_on_disagreement"]) == (2, 1)
    assert s["any_node_right"] == 3
    assert s["latency_p50_s"] == pytest.approx(5.0)
    assert s["latency_p95_s"] == pytest.approx(7.7)
    assert s["per_node"]["a"] == {"answers": 4, "correct": 3, "failed": 0, "accuracy": 0.75}
    assert s["per_node"]["b"]["failed"] == 1 and s["per_node"]["b"]["correct"] == 1


def test_summary_of_a_single_node_has_no_consensus_figure() -> None:
    records = [_record(i, i % 2 == 0, 1.0 + i, [_vote("a", "num:1", i % 2 == 0)], unanimous=True) for i in range(4)]
    s = summarize(records)
    assert s["accuracy"] == 0.5 and s["chunks_with_2plus_answers"] == 0 and s["consensus_rate"] is None


# --- a tiny end-to-end run on scripted test-double nodes ------------------------------------------------


def test_tiny_bench_on_scripted_nodes(tmp_path: Path) -> None:
    messages: list[str] = []
    config = scripted_config(tmp_path)
    results = run_gsm8k_bench(config, command="test", progress=messages.append)
    summary = results["summary"]

    # (a) the weak node alone: right on apples, wrong on pens
    assert (summary["single"]["correct"], summary["single"]["questions"]) == (1, 2)
    assert summary["single"]["consensus_rate"] is None
    # (b) both nodes on every question: they agree on apples, the confident strong node wins on pens
    network = summary["network"]
    assert (network["correct"], network["errors"]) == (2, 0)
    assert (network["chunks_with_2plus_answers"], network["unanimous_chunks"]) == (2, 1)
    assert network["vote_right_on_disagreement"] == 1
    # (c) the training slice went in with labels, the evaluation slice without
    records = results["records"]
    train = [r for r in records if r["phase"] == "train"]
    learned = [r for r in records if r["phase"] == "learned"]
    assert [r["index"] for r in train] == [2, 3] and all(r["labelled"] for r in train)
    assert [r["index"] for r in learned] == [0, 1] and not any(r["labelled"] for r in learned)
    label_rewards = [w for r in train for w in r["rewards"] if w["source"] == "label"]
    assert label_rewards, "the training slice must reward nodes by the label (--accept-labels)"
    assert summary["learned"]["correct"] == 2
    fitness = {f["name"]: f["fitness"] for f in summary["train"]["fitness_at_end"]}
    # the label rewarded the strong node (the weak one is punished when it answers before the
    # chunk is settled; when the strong node's labelled answer comes first, the weak stream is cancelled)
    assert fitness["bench-scripted-strong"] > 0.5
    assert fitness["bench-scripted-strong"] >= fitness["bench-scripted-weak"]
    for phase in ("single", "network", "learned"):
        assert summary[phase]["latency_p50_s"] is not None and summary[phase]["latency_p95_s"] is not None
        assert summary[phase]["fitness_at_end"]

    out = config.out
    assert json.loads((out / "results.json").read_text())["summary"]["network"]["correct"] == 2
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "summary.md").read_text()
    assert "| (a) one node alone |" in markdown and "| (c) DELLM after learning |" in markdown
    assert summary_table(results) in markdown
    assert any("[network 2/2]" in m for m in messages)


def test_an_unreachable_cluster_is_an_error_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Questions whose Ask fails (here: every node is gone) are recorded as errors; the bench goes on."""
    from dellm.client.bench import runner

    def no_nodes(cluster: object, config: object, models: object, threads: int) -> list[str]:
        return []  # start no node: the coordinator answers UNAVAILABLE

    monkeypatch.setattr(runner, "_start_nodes", no_nodes)
    results = run_gsm8k_bench(scripted_config(tmp_path, train_n=0), runs=("single",))
    single = results["summary"]["single"]
    assert (single["questions"], single["errors"], single["correct"]) == (2, 2, 0)
    assert all("UNAVAILABLE" in r["error"] and r["error_kind"] == "unavailable" for r in results["records"])
    assert single["latency_p50_s"] is None


# --- the single node alone vs the self-consistency network --------------------------------------------

# A test-double node for the single-node runs: right step by step on apples, wrong on pens; its pens program
# computes 60 but it states 17 (the program is what counts); it writes no program for apples.
ALONE_SCRIPT = '''
model = "scripted-alone"

[[rule]]
pattern = "(?s)pens.*python"
reply = """```python
boxes = 5
per_box = 12
answer = boxes * per_box
```
Answer: 17"""

[[rule]]
pattern = "(?s)pens.*step by step"
reply = "12 + 5 = 17. Answer: 17"

[[rule]]
pattern = "(?s)apples"
reply = "3 + 4 = 7. Answer: 7"

[default]
reply = "I do not know."
'''


def test_wilson_interval() -> None:
    from dellm.client.bench import wilson_interval

    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(5, 10)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    low, high = wilson_interval(0, 10)  # type: ignore[misc]
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(50, 50)  # type: ignore[misc]
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert summarize([_record(0, True, 1.0, [_vote("a", "num:1", True)], unanimous=True)])["accuracy_ci95"][1] == 1.0


def test_the_program_prompt_alone_is_the_coordinators_word_problem_prompt() -> None:
    from dellm.client.bench.alone import alone_prompt
    from dellm.coordinator.config import DispatchConfig
    from dellm.coordinator.pipeline.prompts import build_chunk_prompt

    question = "A box holds 12 pens. How many pens are in 5 boxes?"
    program = alone_prompt("program", question)
    assert program.chunk is not None and program.text == build_chunk_prompt(program.chunk, [])
    assert "variable named answer" in program.text and program.system == DispatchConfig().program_system_prompt
    function = alone_prompt("function", question)
    assert function.chunk is not None and "def solution():" in function.text and "answer = solution()" in function.text
    assert function.system == program.system
    cot = alone_prompt("cot", question)
    assert cot.chunk is None and "step by step" in cot.text and "'Answer: <number>'" in cot.text
    with pytest.raises(ValueError):
        alone_prompt("few-shot", question)


def test_alone_and_sampled_runs_on_scripted_nodes(tmp_path: Path) -> None:
    alone_script = tmp_path / "alone.toml"
    alone_script.write_text(ALONE_SCRIPT)
    scripts = {**SCRIPTS, "scripted-alone": alone_script}
    config = scripted_config(tmp_path, train_n=0, alone_model="scripted-alone", scripts=scripts,
                             sampled_models=("scripted-strong", "scripted-strong", "scripted-weak"), samples=(1, 5))
    messages: list[str] = []
    results = run_gsm8k_bench(config, command="test", progress=messages.append, runs=("alone", "sampled"))
    summary = results["summary"]
    assert set(summary) == {"alone_cot", "alone_program", "alone_function", "samples_1", "samples_5"}
    # step by step: right on apples, wrong on pens; the program's 60 counts, not the stated 17
    assert summary["alone_cot"]["correct"] == 1 and summary["alone_program"]["correct"] == 2
    assert summary["alone_function"]["correct"] == 2  # the same program, asked for as a function
    pens = next(r for r in results["records"] if r["phase"] == "alone_program" and r["index"] == 1)
    assert pens["predicted"] == 60 and "judged by the program" in pens["chunks"][0]["votes"][0]["program"]
    assert summary["alone_program"]["accuracy_ci95"] == pytest.approx([0.3424, 1.0], abs=1e-4)
    # the network answered every problem, with up to five samples spread over three nodes
    for phase in ("samples_1", "samples_5"):
        assert summary[phase]["errors"] == 0 and summary[phase]["latency_p50_s"] is not None
    runs = results["runs"]
    assert runs["samples_5"]["setup"]["samples"] == 5
    assert "--samples" in runs["samples_5"]["setup"]["coordinator_flags"]
    assert runs["alone_cot"]["setup"]["temperature"] == 0.0 and runs["alone_cot"]["loadavg_before"]
    names = [n.split(" ")[0] for n in summary["samples_1"]["nodes"]]
    assert names == ["bench-scripted-strong", "bench-scripted-strong-2", "bench-scripted-weak"]

    markdown = (config.out / "summary.md").read_text()
    # the baseline is one of the two program prompts (both 2/2; the faster of them)
    assert re.search(r"one node alone, (program|solution\(\) function) \+ sandbox \*\*\(baseline\)\*\*", markdown)
    assert "p50 / baseline p50" in markdown and "95% CI" in markdown
    assert "(a) one node alone" not in markdown  # no (a)/(b)/(c) runs in this folder
    assert any("[alone_cot 2/2]" in m for m in messages) and any("[samples_5 2/2]" in m for m in messages)


def test_runs_are_added_to_a_folders_results(tmp_path: Path) -> None:
    """A later run keeps the phases it did not measure and replaces those it did."""
    from dellm.client.bench import baseline_phase, baseline_table, merge_results

    def summary(correct: int, p50: float) -> dict[str, object]:
        return {**summarize([_record(i, i < correct, p50, [_vote("a", "num:1", i < correct)], unanimous=True)
                             for i in range(4)]), "nodes": ["bench-x (x, llama_cpp, 1 thread(s))"]}

    old = {"benchmark": "gsm8k", "command": "old", "summary": {"single": summary(1, 1.0), "alone_cot": summary(2, 2.0)},
           "records": [{"phase": "single"}, {"phase": "alone_cot"}], "runs": {"alone_cot": {"setup": {}}}}
    new = {"benchmark": "gsm8k", "command": "new", "summary": {"alone_cot": summary(3, 4.0),
                                                              "alone_program": summary(3, 2.0),
                                                              "samples_3": summary(4, 5.0)},
           "records": [{"phase": "alone_cot"}, {"phase": "alone_program"}, {"phase": "samples_3"}],
           "runs": {"samples_3": {"setup": {"capped": False}}}}
    merged = merge_results(old, new)
    assert merged["command"] == "old"  # the (a)/(b)/(c) description stays
    assert set(merged["summary"]) == {"single", "alone_cot", "alone_program", "samples_3"}
    assert merged["summary"]["alone_cot"]["correct"] == 3
    assert [r["phase"] for r in merged["records"]] == ["single", "alone_cot", "alone_program", "samples_3"]
    # equal accuracy: the faster prompt is the baseline; the network's p50 is 2.5x its
    assert baseline_phase(merged) == "alone_program"
    table = baseline_table(merged)
    assert "| network, 3 samples | x | 100.0% | [51.0, 100.0] | 4/4 | 0 | 5.0 | 5.0 | 2.50x |" in table
    assert cli.main(["bench", "gsm8k", "--runs", "alone,bogus", "--out", str(tmp_path)]) == 2
    assert cli.main(["bench", "gsm8k", "--runs", "sampled", "--samples", "1,x", "--out", str(tmp_path)]) == 2


def test_sampled_phases_are_named_by_samples_and_network(tmp_path: Path) -> None:
    from dellm.client.bench.report import phase_title

    assert phase_title("samples_1") == "network, 1 sample"
    assert phase_title("samples_3_3x1.5b") == "network, 3 samples (3x1.5b)"
    assert phase_title("alone_cot") == "one node alone, chain of thought"
    with pytest.raises(BenchError, match="--network-tag"):
        validate_config(scripted_config(tmp_path, network_tag="a b"), runs=("sampled",))
    with pytest.raises(BenchError, match="--runs"):
        validate_config(scripted_config(tmp_path), runs=("everything",))


def test_a_vote_is_judged_by_the_value_the_coordinator_voted_on() -> None:
    """A program answer's text may state anything; its executed value (``num:``) is what counts."""
    from dellm.client.bench.runner import vote_number

    assert vote_number("```python\nanswer = 3 * 6\n```\nprint 2 lines", "num:18", False) == 18
    assert vote_number("He has 7 apples. Answer: 7", "text:he has 7 apples", False) == 7
    assert vote_number("Answer: 7", "num:7", True) is None


def test_a_paired_run_asks_each_problem_of_both_in_turn_and_reports_latency_ratios(tmp_path: Path) -> None:
    alone_script = tmp_path / "alone.toml"
    alone_script.write_text(ALONE_SCRIPT)
    scripts = {**SCRIPTS, "scripted-alone": alone_script}
    config = scripted_config(tmp_path, train_n=0, alone_model="scripted-alone", alone_prompts=("program",),
                             scripts=scripts, sampled_models=("scripted-strong", "scripted-weak"), samples=(3,),
                             network_tag="pair")
    messages: list[str] = []
    results = run_gsm8k_bench(config, command="test", progress=messages.append, runs=("paired",))
    assert set(results["summary"]) == {"alone_program", "samples_3_pair"}
    # problem by problem: alone then network for the first, network then alone for the second
    assert [(r["phase"], r["index"]) for r in results["records"]] == [
        ("alone_program", 0), ("samples_3_pair", 0), ("samples_3_pair", 1), ("alone_program", 1)]
    assert results["summary"]["alone_program"]["correct"] == 2
    ratio = results["paired_latency"]["samples_3_pair"]
    assert ratio["alone"] == "alone_program" and ratio["pairs"] == 2 and ratio["median_ratio"] > 0
    assert results["runs"]["samples_3_pair"]["setup"]["paired_with"] == "alone_program"
    assert any("[paired 2/2]" in m for m in messages)


def test_the_verdict_is_against_the_best_alone_prompt_and_pairs_only_with_it() -> None:
    """The baseline is the better of the node's prompts alone; a latency ratio paired with the other prompt
    is not the baseline's, and 31/50 against 26/50 is ten points exactly."""
    from dellm.client.bench.report import baseline_verdict

    def summary(correct: int, p50: float) -> dict[str, object]:
        return {**summarize([_record(i, i < correct, p50, [_vote("a", "num:1", i < correct)], unanimous=True)
                             for i in range(50)]), "nodes": []}

    results: dict[str, object] = {
        "summary": {"alone_cot": summary(26, 12.0), "alone_program": summary(29, 7.0),
                    "samples_5_2x1.5b": summary(31, 21.0)},
        "paired_latency": {"samples_5_2x1.5b": {"alone": "alone_cot", "p50_ratio": 1.75, "pairs": 50}}}
    [line] = baseline_verdict(results)
    assert "+4.0 points over the baseline (misses +10)" in line
    assert "p50 3.00x the baseline's (misses <= 2x)" in line  # not the 1.75x paired with chain of thought
    results["summary"] = {"alone_cot": summary(26, 12.0), "samples_5_2x1.5b": summary(31, 21.0)}
    [line] = baseline_verdict(results)
    assert "+10.0 points over the baseline (meets +10)" in line and "1.75x alone_cot's, paired" in line
