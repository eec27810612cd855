"""Chaos with real processes: nodes SIGKILLed and SIGSTOPped, a garbage node, a coordinator crash.

Runs scripts/chaos.py briefly; it exits non-zero if any query was lost (no answer and no status).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("scenario", "queries"), [("kill", 80), ("all", 120)])
def test_every_query_ends_in_an_answer_or_a_clear_status(tmp_path: Path, scenario: str, queries: int) -> None:
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "scripts/chaos.py", "--scenario", scenario, "--queries", str(queries),
                           "--clients", "8", "--restart-at", "3", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["counts"]["lost"] == 0
    assert sum(report["counts"].values()) == queries
    assert report["counts"]["answered"] >= queries // 2
    assert set(report["failures_by_status"]) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
    assert report["faults"], "faults were injected"


def test_rogues_lose_nothing_and_win_no_vote_with_a_wrong_answer(tmp_path: Path) -> None:
    """The rogue scenario (scripts/chaos_rogues.py): a logprob bomb, a slowloris, a feedback replayer, a
    hijacker and a Join flood beside honest nodes."""
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "scripts/chaos.py", "--scenario", "rogue", "--queries", "120",
                           "--clients", "8", "--nodes", "4", "--flood", "60", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["counts"] == {"answered": 120, "failed": 0, "lost": 0}
    rogue = report["rogue"]
    assert rogue["rogue_wins_wrong"] == [] and rogue["victims_kept"]
    counts = rogue["counts"]
    rounds = counts["hijack rounds"]
    assert counts["hijack leave PERMISSION_DENIED"] == counts["hijack join PERMISSION_DENIED"] == rounds > 0
    assert not [key for key in counts if key.startswith("replayed feedback") and key.endswith(" OK")]
    assert counts["flood join OK"] <= 32 and counts["flood join RESOURCE_EXHAUSTED"] >= 60 - 32
    assert set(rogue["flood_states"]) == {"probation"}  # no flood node ever got work
