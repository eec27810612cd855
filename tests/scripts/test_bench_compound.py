"""scripts/bench_compound.py: its scoring on tables, its query file, its argument checks and one tiny real run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import bench_compound
from scripts.bench_compound import (
    CompoundQuery,
    DataError,
    QueryRecord,
    consensus_figures,
    is_fully_correct,
    load_queries,
    mentions,
    missing_items,
    numbers_in,
    read_events,
    states_number,
    summarize,
)
from tests.conftest import require_model

ROOT = Path(__file__).resolve().parents[2]
QWEN_05B = "qwen2.5-coder-0.5b-instruct"


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "stated"),
    [
        ("The result is 1,158.", 1158, True),
        ("That comes to $36.00 in interest.", 36, True),
        ("15% of 240 is 36.0", 36, True),
        ("**36**", 36, True),
        ("It is 1.75", 1.75, True),
        ("$2,520", 2520, True),
        ("12,345,678 people", 12345678, True),
        ("Water boils at 100°C", 100, True),
        ("The answer is -4.", -4, True),
        ("10-5 = 5", 5, True),
        ("The result is 360.", 36, False),  # a number is compared by value, not by its digits
        ("3.6 apples", 36, False),
        ("1.158 thousand", 1158, False),
        ("The answer is 1158.5", 1158, False),
        ("H2O", 2, False),  # a digit inside a word is no number
        ("no number at all", 0, False),
    ],
)
def test_a_number_is_stated_when_its_value_appears(text: str, value: float, stated: bool) -> None:
    assert states_number(text, value) is stated


def test_numbers_are_read_with_separators_currency_and_decimals() -> None:
    assert numbers_in("Add $1,250 and 3780.50, then 12, 18 and 27%") == [1250, 3780.5, 12, 18, 27]


@pytest.mark.parametrize(
    ("text", "phrases", "found"),
    [
        ("The capital of Japan is Tokyo.", ["Tokyo"], True),
        ("the capital of japan is TOKYO", ["Tokyo"], True),
        ("Its symbol is Au.", ["Au"], True),
        ("Leonardo da\nVinci painted it", ["da Vinci"], True),
        ("Plants take in CO2", ["carbon dioxide", "CO2"], True),
        ("A Tokyoite lives there", ["Tokyo"], False),  # a word, not a piece of one
        ("Because of the audience", ["Au"], False),
        ("It is Kyoto", ["Tokyo"], False),
    ],
)
def test_a_fact_is_named_when_one_phrase_appears_as_a_word(text: str, phrases: list[str], found: bool) -> None:
    assert mentions(text, phrases) is found


@pytest.mark.parametrize(
    ("answer", "missing"),
    [
        ("15% of 240 is 36, and the capital of Japan is Tokyo.", []),
        ("15% of 240 is 36.", ["Tokyo"]),
        ("The capital of Japan is Tokyo.", ["36"]),
        ("I cannot say.", ["36", "Tokyo"]),
    ],
)
def test_a_query_is_fully_correct_only_when_every_item_appears(answer: str, missing: list[str]) -> None:
    expect: list[dict[str, Any]] = [{"number": 36}, {"any": ["Tokyo"]}]
    assert missing_items(answer, expect) == missing
    assert is_fully_correct(answer, expect) is (not missing)


# ---------------------------------------------------------------------------------------------
# Events and the summary
# ---------------------------------------------------------------------------------------------

EVENTS = "\n".join(json.dumps(e) for e in [
    {"plan": {"query_id": "q1", "planner": "rules", "chunks": [
        {"chunk_id": "c1", "operation": "MATH", "text": "Calculate 15% of 240"},
        {"chunk_id": "c2", "operation": "FACT", "text": "name the capital of Japan"}]}},
    {"chunk_result": {"chunk_id": "c1", "answer": "36", "unanimous": True, "groups": 1, "votes": [
        {"node_id": "aaaaaaaa11", "answer": "36", "normalized": "36"},
        {"node_id": "bbbbbbbb22", "answer": "36.0", "normalized": "36"}]}},
    {"chunk_result": {"chunk_id": "c2", "answer": "Tokyo", "groups": 1, "votes": [
        {"node_id": "aaaaaaaa11", "answer": "Tokyo", "normalized": "tokyo"},
        {"node_id": "bbbbbbbb22", "failed": True, "error": "timeout"}]}},
    {"final": {"query_id": "q1", "answer": "36; Tokyo.", "synthesis": "template", "total_ms": 1234.5,
               "chunks": [{"chunk_id": "c1", "operation": "MATH", "answer": "36", "unanimous": True},
                          {"chunk_id": "c2", "operation": "FACT", "answer": "Tokyo"}]}},
])


def test_the_ask_events_give_the_final_and_every_chunk_with_its_votes() -> None:
    outcome = read_events(EVENTS, {"aaaaaaaa11": "qwen-1.5b"})
    assert outcome.final is not None and outcome.final["answer"] == "36; Tokyo."
    assert outcome.planner == "rules"
    c1, c2 = outcome.chunks
    assert (c1["text"], c1["unanimous"], c1["valid_votes"]) == ("Calculate 15% of 240", True, 2)
    assert [v["node"] for v in c1["votes"]] == ["qwen-1.5b", "bbbbbbbb"]
    assert (c2["unanimous"], c2["valid_votes"]) == (False, 1)  # an absent "unanimous" is false


def test_consensus_counts_chunks_with_two_votes_and_all_chunks() -> None:
    record = QueryRecord(1, "q", "mixed", ["36", "Tokyo"], chunks=read_events(EVENTS).chunks)
    other = QueryRecord(2, "q", "mixed", ["1"], chunks=[{"valid_votes": 2, "unanimous": False}])
    figures = consensus_figures([record, other])
    assert figures == {"chunks": 3, "chunks_with_2plus_votes": 2, "unanimous_chunks": 1, "unanimous_rate": 0.5,
                       "unanimous_share_of_all_chunks": pytest.approx(1 / 3)}


def test_the_summary_gives_accuracy_per_kind_and_latency_of_answered_queries() -> None:
    records = [QueryRecord(1, "a", "arithmetic", ["1"], correct=True, latency_s=1.0, coordinator_ms=800),
               QueryRecord(2, "b", "arithmetic", ["2"], correct=False, latency_s=3.0, coordinator_ms=2500),
               QueryRecord(3, "c", "fact", ["x"], correct=True, latency_s=2.0, coordinator_ms=1500),
               QueryRecord(4, "d", "fact", ["y"], error="UNAVAILABLE: gone", latency_s=60.0)]
    summary = summarize(records)
    assert (summary["fully_correct"], summary["accuracy"], summary["errors"]) == (2, 0.5, 1)
    assert summary["per_kind"] == {"arithmetic": {"queries": 2, "correct": 1, "accuracy": 0.5},
                                   "fact": {"queries": 2, "correct": 1, "accuracy": 0.5}}
    assert summary["latency_p50_s"] == 2.0 and summary["latency_max_s"] == 3.0  # the error's 60 s is not a latency
    assert summary["coordinator_p50_s"] == 1.5


# ---------------------------------------------------------------------------------------------
# The query file
# ---------------------------------------------------------------------------------------------

QUERIES = load_queries(bench_compound.DEFAULT_DATA)


def test_the_query_file_has_enough_varied_queries_of_every_kind() -> None:
    assert len(QUERIES) >= 48
    assert len({q.query.lower() for q in QUERIES}) == len(QUERIES)
    kinds = {kind: sum(q.kind == kind for q in QUERIES) for kind in bench_compound.KINDS}
    assert set(q.kind for q in QUERIES) == set(bench_compound.KINDS)
    assert min(kinds["arithmetic"], kinds["mixed"], kinds["dependent"]) >= len(QUERIES) // 4
    assert all(re.search(r"\b(then|and)\b", q.query, re.I) for q in QUERIES)  # seed-style: steps joined


@pytest.mark.parametrize("item", QUERIES, ids=lambda q: f"line{q.index}")
def test_every_expectation_is_well_formed_and_not_given_away_by_the_query(item: CompoundQuery) -> None:
    for expected in item.expect:
        assert bench_compound.check_item(expected) == ""
        if "number" in expected:
            assert math.isfinite(expected["number"])
            assert not states_number(item.query, expected["number"]), "the query itself states the answer"
        else:
            assert not mentions(item.query, expected["any"]), "the query itself names the answer"


# Every arithmetic expectation, recomputed here from the query's own numbers: query -> the values expected.
RECOMPUTED: dict[str, list[float]] = {
    "What is 132 divided by 11 and what is 7 times 8?": [132 / 11, 7 * 8],
    "Calculate 35% of 240 and calculate 25% of 64": [0.35 * 240, 0.25 * 64],
    "What is 345 plus 278, and what is 900 minus 456?": [345 + 278, 900 - 456],
    "Find the square root of 196 and compute 9 squared": [math.sqrt(196), 9**2],
    "Compute 23 times 17 and also compute 1000 divided by 8": [23 * 17, 1000 / 8],
    "What is the average of 12, 18 and 27, and what is 5 cubed?": [(12 + 18 + 27) / 3, 5**3],
    "Subtract 389 from 1200 and divide 96 by 6": [1200 - 389, 96 / 6],
    "Calculate 8% of 350, then work out 72 divided by 8": [0.08 * 350, 72 / 8],
    "Double 475 and halve 318": [2 * 475, 318 / 2],
    "What is 12.5% of 480 and what is 3.5 times 6?": [0.125 * 480, 3.5 * 6],
    "Multiply 45 by 22, and add 1,250 and 3,780": [45 * 22, 1250 + 3780],
    "How much is 7% interest on $3000, and what is $450 minus $175?": [0.07 * 3000, 450 - 175],
    "What is 2 to the power of 10 and what is 15 squared?": [2**10, 15**2],
    "What is 7 divided by 4 and what is 2.5 plus 3.75?": [7 / 4, 2.5 + 3.75],
    "Work out 999 plus 1 and 50 times 50": [999 + 1, 50 * 50],
    "What is 30% of 90, and how much is 1000 minus 1?": [0.30 * 90, 1000 - 1],
    "Calculate 15% of 240 then name the capital of Japan": [0.15 * 240],
    "What is 156 divided by 13 and what is the chemical symbol for gold?": [156 / 13],
    "What is 56 plus 89, and what is the capital of France?": [56 + 89],
    "Multiply 13 by 7 and tell me which planet is the largest in our solar system": [13 * 7],
    "Who wrote Romeo and Juliet, and what is 250 minus 87?": [250 - 87],
    "Calculate 10% interest on $1500 then name the largest ocean on Earth": [0.10 * 1500],
    "What is the square root of 225, and what is the chemical symbol for iron?": [math.sqrt(225)],
    "What is the capital of Italy and what is 18 times 12?": [18 * 12],
    "Divide 720 by 9, then tell me the boiling point of water in degrees Celsius": [720 / 9, 100],
    "Which planet is closest to the sun, and what is 40% of 85?": [0.40 * 85],
    "Add 1,275 and 3,490 and name the author of the novel 1984": [1275 + 3490],
    "What is 9 squared and what is the capital of Germany?": [9**2],
    "What is the chemical symbol for sodium, and what is 675 divided by 25?": [675 / 25],
    "Calculate 20% of 45 and name the planet known as the Red Planet": [0.20 * 45],
    "How many days are in a leap year, and what is 45 times 3?": [366, 45 * 3],
    "Who painted the Mona Lisa and what is 1000 minus 358?": [1000 - 358],
    "What is 33 plus 67 and what is the SI unit of force?": [33 + 67],
    "What is the largest country by area, and what is the average of 40, 50 and 90?": [(40 + 50 + 90) / 3],
    "What is 123 plus 456, then multiply the result by 2": [(123 + 456) * 2],
    "Add 250 and 175 and then add 100 to that result": [250 + 175 + 100],
    "Calculate 10% interest on $1000 then double it": [0.10 * 1000 * 2],
    "Multiply 12 by 8, subtract 16 from it, and then divide by 4": [(12 * 8 - 16) / 4],
    "Take 15% of 600, then add 45 to that": [0.15 * 600 + 45],
    "What is 84 divided by 7, then square the result": [(84 / 7) ** 2],
    "Subtract 38 from 200 and then halve the result": [(200 - 38) / 2],
    "Find the square root of 256 then multiply it by 5": [math.sqrt(256) * 5],
    "Calculate 25% of 360, then subtract 15 from the answer": [0.25 * 360 - 15],
    "What is 17 times 6? Then add 48 to it.": [17 * 6 + 48],
    "Add 3,500 and 1,250, then find 20% of that amount": [(3500 + 1250) * 0.20],
    "What is 9 times 9, then subtract 1, and then divide the result by 8": [(9 * 9 - 1) / 8],
    "Calculate 15% of 1200, then subtract that from 1200": [1200 - 0.15 * 1200],
    "What is 45 plus 55, then what is the square root of that?": [math.sqrt(45 + 55)],
    "Double 65, then add 20% of the result to it": [2 * 65 + 0.20 * (2 * 65)],
    "Calculate 5% interest on $2400, then add it to $2400": [2400 + 0.05 * 2400],
    "Add 14 and 29, then multiply the result by 3, and name the capital of Spain": [(14 + 29) * 3],
    "What is 500 minus 125, then divide it by 5, and what is the capital of Canada?": [(500 - 125) / 5],
    "What is the capital of Egypt and what is the freezing point of water in Fahrenheit?": [32],
}


def test_every_arithmetic_expectation_is_recomputed() -> None:
    with_numbers = {q.query: [float(i["number"]) for i in q.expect if "number" in i] for q in QUERIES}
    for query, values in RECOMPUTED.items():
        assert query in with_numbers, f"not in the query file: {query!r}"
        assert with_numbers[query] == pytest.approx(values, abs=1e-9), query
    assert {q for q, values in with_numbers.items() if values} <= set(RECOMPUTED)  # none left unchecked


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1 is not JSON"),
        ('{"expect": [{"number": 1}]}', 'line 1 has no "query" string'),
        ('{"query": "What is 1 plus 1?"}', 'line 1 has no "expect" list'),
        ('{"query": "What is 1 plus 1?", "expect": [{"number": "two"}]}', "must be a finite number"),
        ('{"query": "What is 1 plus 1?", "expect": [{"number": NaN}]}', "must be a finite number"),
        ('{"query": "Capital?", "expect": [{"any": []}]}', "non-empty list"),
        ('{"query": "Capital?", "expect": [{"word": "Paris"}]}', "an expected item is"),
    ],
)
def test_a_bad_query_line_is_refused_with_its_line_number(line: str, message: str, tmp_path: Path) -> None:
    data = tmp_path / "queries.jsonl"
    data.write_text(line + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        load_queries(data)


# ---------------------------------------------------------------------------------------------
# Argument checks: exit 2 with one line, nothing started, nothing written
# ---------------------------------------------------------------------------------------------


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "scripts/bench_compound.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "--n must be at least 1, got 0"),
        (["--n", "-3"], "--n must be at least 1"),
        (["--n", "two"], "invalid int value"),
        (["--n", "100000"], "is more than the"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--models", "no-such-model"], "unknown or unavailable model 'no-such-model'"),
        (["--models", f"{QWEN_05B},no-such-model"], "unknown or unavailable model 'no-such-model'"),
        (["--models", " , "], "--models needs at least one model"),
        (["--synth-model", "no-such-model"], "unknown or unavailable model 'no-such-model'"),
        (["--alone", "no-such-model"], "unknown or unavailable model 'no-such-model'"),
        (["--data", "/no/such/file.jsonl"], "cannot read the query file"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(args: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = run_script(*args, "--out", str(out))
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not out.exists() and not out.with_name("report_alone.json").exists()


def test_a_bad_data_line_is_refused_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "queries.jsonl"
    data.write_text('{"query": "What is 2 plus 2?", "expect": [{"number": 4}]}\n{"query": "oops"}\n')
    done = run_script("--data", str(data), "--out", str(tmp_path / "report.json"))
    assert done.returncode == 2
    assert done.stderr.strip() == 'bench_compound.py: line 2 has no "expect" list'


@pytest.mark.slow
def test_a_failed_run_writes_the_error_and_exits_1(tmp_path: Path) -> None:
    """A synthesis "model" that is a .gguf file in name only: the coordinator cannot start, so no figure."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    out = tmp_path / "report.json"
    done = run_script("--models", str(broken), "--synth-model", "none", "--n", "1",
                      "--out", str(out), timeout=300)
    assert done.returncode == 1, done.stderr
    report = json.loads(out.read_text())
    assert report["error"] and "summary" not in report and report["command"].startswith("scripts/bench_compound.py")
    assert "no figures, the run failed" in done.stderr


# ---------------------------------------------------------------------------------------------
# Tiny real runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.model
@pytest.mark.slow
def test_a_tiny_real_run_reports_every_figure(tmp_path: Path) -> None:
    require_model(QWEN_05B)
    out = tmp_path / "compound.json"
    done = run_script("--n", "2", "--models", QWEN_05B, "--synth-model", "none", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["queries"] == 2 and summary["errors"] == 0
    assert summary["latency_p50_s"] > 0 and summary["consensus"]["chunks"] >= 2
    assert all(r["answer"].strip() and r["chunks"] for r in report["records"])
    assert "fully correct" in done.stdout and "unanimous" in done.stdout


@pytest.mark.model
@pytest.mark.slow
def test_a_tiny_run_of_one_node_alone(tmp_path: Path) -> None:
    require_model(QWEN_05B)
    out = tmp_path / "compound.json"
    done = run_script("--n", "1", "--alone", QWEN_05B, "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.with_name("compound_alone.json").read_text())
    assert report["model"] == QWEN_05B and report["records"][0]["answer"].strip()
    assert not out.exists()
