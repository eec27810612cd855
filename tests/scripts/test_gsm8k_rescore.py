"""scripts/gsm8k_rescore.py: recorded network answers rescored under other rules, on a hand-made run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import gsm8k_rescore

FRIES = "Dave ate 14 fries and 9 were left. How many french fries were in the pack?"


def vote(text: str, number: float | None) -> dict[str, object]:
    return {"answer": text, "number": number, "failed": number is None}


def results(tmp_path: Path) -> Path:
    records = [
        # the program says 5.5 fries (implausible); words and the function agree on 23, right
        {"phase": "samples_5_x", "index": 0, "question": FRIES, "label": "23", "correct": False,
         "chunks": [{"votes": [vote("```python\nanswer = 5.5\n```", 5.5), vote("Answer: 23", 23.0),
                               vote("```python\ndef solution():\n    return 23\nanswer = solution()\n```", 23.0)]}]},
        # a plausible program, right, and a worked answer that disagrees
        {"phase": "samples_5_x", "index": 1, "question": FRIES, "label": "23", "correct": True,
         "chunks": [{"votes": [vote("```python\nanswer = 23\n```", 23.0), vote("Answer: 20", 20.0)]}]},
        {"phase": "alone_program", "index": 0, "question": FRIES, "label": "23", "correct": True, "chunks": []},
    ]
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"records": records}))
    return path


def test_the_rules_are_scored_on_the_recorded_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = results(tmp_path)
    problems = gsm8k_rescore.load(path)
    assert [len(p.answers) for p in problems] == [3, 2]  # the node alone's records are not the network's
    assert [a.method for a in problems[0].answers] == ["program", "words", "function"]
    assert gsm8k_rescore.program_first(problems[0]) == 23 and gsm8k_rescore.program_first(problems[1]) == 23
    assert gsm8k_rescore.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "answers: 5; implausible: 1, of them right 0" in out
    assert "greedy program right when plausible: 1/1; when implausible: 0/1" in out
    assert "recorded vote                      run 1  total 1" in out
    assert "greedy program alone               run 1  total 1" in out
    assert "plausible program, else the vote   run 2  total 2" in out


def test_files_without_network_answers_are_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"records": []}))
    assert gsm8k_rescore.main([str(path)]) == 1
    assert "no recorded network answers" in capsys.readouterr().err
