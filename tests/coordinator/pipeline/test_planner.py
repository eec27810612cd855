"""The optional model planner: its plans are validated, and the rules take over when they are bad."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dellm.coordinator.config import DecomposeConfig
from dellm.coordinator.pipeline.decompose import decompose
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.planner import ModelPlanner, PlanRejectedError, parse_model_plan
from dellm.node.backends.scripted import ScriptedBackend

SEED = "Calculate 10% interest on $1000 then find best savings accounts"
GOOD_PLAN = json.dumps([
    {"text": "Calculate 10% interest on $1000", "op": "MATH_OP", "after": []},
    {"text": "find best savings accounts", "op": "SEARCH_OP", "after": [1]},
])
SOCRATIC = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "gsm8k" / "test_socratic.jsonl"


def test_a_valid_model_plan_is_used() -> None:
    plan = parse_model_plan(f"Here is the plan:\n{GOOD_PLAN}\n", SEED, DecomposeConfig())
    assert [(c.chunk_id, c.operation, c.depends_on) for c in plan.chunks] == [
        ("c1", Operation.MATH_OP, ()), ("c2", Operation.SEARCH_OP, ("c1",))]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("I would first calculate the interest.", "no JSON list"),
        ("[{'text': 'x'}]", "invalid JSON"),
        ("[]", "non-empty list"),
        (json.dumps([{"text": "Calculate 10% interest on $1000", "op": "DANCE_OP"}]), "unknown operation"),
        (json.dumps([{"text": "Calculate 10% interest on $1000", "after": [2]},
                     {"text": "find best savings accounts", "after": [1]}]), "only earlier step numbers"),
        (json.dumps([{"text": "Calculate 10% interest on $1000", "after": [1]}]), "only earlier step numbers"),
        (json.dumps([{"text": "Write a poem about the moon and stars"}]), "not taken from the request"),
        (json.dumps([{"text": ""}]), "has no text"),
        (json.dumps([{"text": "find best savings accounts"}] * 9), "at most 8"),
    ],
    ids=["prose", "not-json", "empty", "unknown-op", "forward-dependency", "self-dependency", "invented-step",
         "empty-step", "too-many"],
)
def test_invalid_model_plans_are_rejected_with_the_reason(reply: str, reason: str) -> None:
    with pytest.raises(PlanRejectedError, match=reason):
        parse_model_plan(reply, SEED, DecomposeConfig())


def _planner_double(reply: str) -> ModelPlanner:
    """A planner over the scripted test-double backend, replying ``reply`` to anything."""
    backend = ScriptedBackend.from_dict({"rule": [{"pattern": ".", "reply": reply}]})
    return ModelPlanner(backend, DecomposeConfig())


async def test_the_planner_uses_a_good_model_plan() -> None:
    plan, how = await _planner_double(GOOD_PLAN.replace(" ", " ")).plan(SEED)
    assert how == "model" and len(plan.chunks) == 2


async def test_the_planner_falls_back_to_the_rules() -> None:
    plan, how = await _planner_double("Sure! Step one: do the maths.").plan(SEED)
    assert how.startswith("rules: no JSON list") and plan == decompose(SEED)


def _sub_questions(record: dict[str, str]) -> list[str]:
    return [line.split(" ** ")[0].strip() for line in record["answer"].splitlines() if " ** " in line]


def test_socratic_sub_questions_in_sequence_become_dependent_chunks() -> None:
    if not SOCRATIC.exists():
        pytest.skip(f"GSM8K socratic data not found at {SOCRATIC}")
    checked = 0
    for line in SOCRATIC.read_text(encoding="utf-8").splitlines()[:60]:
        questions = _sub_questions(json.loads(line))
        if not 2 <= len(questions) <= DecomposeConfig().max_chunks:
            continue
        # "Q1? Then Q2? Then Q3?": each sub-question is one chunk that waits for the one before it
        query = " Then ".join(q.rstrip("?") + "?" for q in questions)
        plan = decompose(query)
        assert len(plan.chunks) == len(questions), query
        for previous, chunk in zip(plan.chunks, plan.chunks[1:], strict=False):
            assert chunk.depends_on == (previous.chunk_id,), query
        for question, chunk in zip(questions, plan.chunks, strict=True):
            assert re.sub(r"\W", "", question.lower()).startswith(re.sub(r"\W", "", chunk.text.lower())[:20])
        checked += 1
    assert checked >= 30
