"""Stage 5 (synthesize): a model's answer is served only when it is faithful to the chunk results,
within a time budget, and nothing the model wrote reaches the client before it is checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from dellm.coordinator.config import SynthesisConfig
from dellm.coordinator.pipeline import synthesize as synthesize_module
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.synthesize import (
    ModelSynthesizer,
    OverrunRecord,
    TemplateSynthesizer,
    faithfulness_problem,
    template_answer,
)
from dellm.coordinator.types import Chunk, ChunkResult
from tests.conftest import script


def _result(chunk_id: str, operation: Operation, text: str, answer: str, *, depends_on: tuple[str, ...] = (),
            value: float | None = None) -> ChunkResult:
    chunk = Chunk(chunk_id, operation, text, len(text.split()), 0.5, depends_on)
    return ChunkResult(chunk, answer, "n1", (), True, 1.0, 1, value=value)


# The seed query of the demo: c1 was verified as 100.
INTEREST = "Calculate 10% interest on $1000 then find best savings accounts"
ACCOUNTS = "High-yield online savings accounts, credit union savings and money market accounts."
INTEREST_RESULTS = (
    _result("c1", Operation.MATH_OP, "Calculate 10% interest on $1000", "10% of $1000 is $100. Answer: 100"),
    _result("c2", Operation.SEARCH_OP, "find best savings accounts", ACCOUNTS, depends_on=("c1",)),
)
# Two arithmetic steps, the second using the first: 87, then 100.
CHAIN = "What is 12 * 7 + 3, then add 13 to it"
CHAIN_RESULTS = (
    _result("c1", Operation.MATH_OP, "What is 12 * 7 + 3", "12 * 7 + 3 = 87. Answer: 87"),
    _result("c2", Operation.MATH_OP, "add 13 to it", "87 + 13 = 100. Answer: 100", depends_on=("c1",)),
)
# Thousands, and a result that is not a number.
LARGE = "What is 2500 * 4 and what is the capital of France"
LARGE_RESULTS = (
    _result("c1", Operation.MATH_OP, "What is 2500 * 4", "Answer: 10000"),
    _result("c2", Operation.SEARCH_OP, "what is the capital of France", "Paris is the capital of France."),
)
# A negative result, a result stated as a program's value, and a percentage result.
NEGATIVE = "What is 5 - 12, then what percent is 30 of 240"
NEGATIVE_RESULTS = (
    _result("c1", Operation.MATH_OP, "What is 5 - 12", "5 - 12 = -7", value=-7.0),
    _result("c2", Operation.MATH_OP, "what percent is 30 of 240", "30 / 240 * 100 = 12.5. Answer: 12.5"),
)
CASES = {"interest": (INTEREST, INTEREST_RESULTS), "chain": (CHAIN, CHAIN_RESULTS), "large": (LARGE, LARGE_RESULTS),
         "negative": (NEGATIVE, NEGATIVE_RESULTS)}
DEMO_ANSWER = ("Interest = 100 × 0.10 × 1 = 10. So the interest amount of $10. The best savings accounts are "
               "high-yield online savings accounts, credit union savings and money market accounts.")


@pytest.mark.parametrize(
    ("case", "answer"),
    [
        pytest.param("interest", "The 10% interest on $1,000 is $100.00. The best savings accounts are high-yield "
                     "online savings accounts, credit union savings and money market accounts.", id="currency"),
        pytest.param("interest", "Interest of 10 percent on 1000 dollars comes to 100 dollars; good picks are "
                     "high-yield online savings accounts and money market accounts.", id="units-and-percent-words"),
        pytest.param("interest", "1. 10% interest on $1000 is $100.\n2. Savings: high-yield online savings "
                     "accounts, credit union savings and money market accounts.", id="list-markers"),
        pytest.param("interest", "Step 1 gives $100 of interest on $1000 at 10%. Step 2 found high-yield online "
                     "savings accounts and credit union savings.", id="step-references"),
        # What qwen2.5-coder-0.5b wrote (three list items for two steps): faithful, if not elegant.
        pytest.param("interest", "1. The user asked: Calculate 10% interest on $1000 then find best savings accounts."
                     "\n2. The user calculated 10% interest on $1000, which is 100.\n3. The user found best savings "
                     "accounts: High-yield online savings accounts, credit union savings and money market accounts.",
                     id="list-longer-than-the-steps"),
        pytest.param("negative", "Step 1: Calculate 5 - 12\n- What is 5 - 12: -7\n\nStep 2: Convert 30 to a "
                     "percentage\n- What percent is 30 of 240: 12.5\n\nStep 3: Write the final answer\n- The final "
                     "answer is 12.5% of 240.", id="step-headings"),
        pytest.param("chain", "12 * 7 + 3 = 87, and 87 + 13 = 100.", id="right-working"),
        pytest.param("chain", "First, 12 * 7 + 3 is 87. Adding 13 to it gives 100.", id="results-restated"),
        pytest.param("large", "2,500 times 4 is 10,000, and Paris is the capital of France.", id="thousands"),
        pytest.param("negative", "5 - 12 is -7, and 30 is 12.5% of 240.", id="negative-and-percent-result"),
        pytest.param("negative", "5 - 12 is -7, and 30 of 240 is 12.5.", id="percent-result-plainly"),
    ],
)
def test_faithful_answers_are_accepted(case: str, answer: str) -> None:
    query, results = CASES[case]
    assert faithfulness_problem(answer, query, results) is None


@pytest.mark.parametrize(
    ("case", "answer", "reason"),
    [
        pytest.param("interest", DEMO_ANSWER, "it states 0.10, which is in neither the query nor any result",
                     id="demo-invented-rate"),
        pytest.param("interest", "The interest on $1000 at 10% is $10; the interest amount of $10 is small. Try "
                     "high-yield online savings accounts and money market accounts.",
                     "it states 10, which is in neither", id="demo-percent-is-not-a-plain-number"),
        pytest.param("interest", "At 10% a year, $1000 earns $100 of interest, or $8.33 a month, at "
                     "high-yield online savings accounts.", "it states 8.33,", id="invented-derived-figure"),
        pytest.param("interest", "$1000 × 0.1 = $100 of interest; pick high-yield online savings accounts.",
                     "it states 0.1,", id="fraction-of-a-percentage"),
        pytest.param("interest", "As of 2024, 10% interest on $1000 is $100; high-yield online savings accounts "
                     "pay well.", "it states 2024,", id="invented-year"),
        pytest.param("interest", "1. The interest on $1000 at 10% is 100.\n2. The user found high-yield online "
                     "savings accounts.\n4. Money market accounts.", "it states 4,", id="list-number-out-of-sequence"),
        pytest.param("interest", "The interest is 100 on $1000 at 10%, in high-yield online savings accounts; "
                     "see step 3.", "it states 3,", id="reference-to-a-step-that-is-not-there"),
        pytest.param("interest", "The best savings accounts are high-yield online savings accounts, credit union "
                     "savings and money market accounts, where 10% interest on $1000 applies.",
                     "it leaves out the result of c1 (100)", id="missing-math-result"),
        pytest.param("interest", "The 10% interest on $1000 is $100.", "it leaves out the result of c2 (High-yield",
                     id="missing-text-result"),
        pytest.param("chain", "12 * 7 + 3 is 84, and adding 13 gives 97.", "it states 84,",
                     id="both-results-replaced"),
        pytest.param("chain", "12 * 7 + 3 is 100, and adding 13 to it gives 87.", "it gives 100 for c1, whose "
                     "result is 87", id="results-swapped"),
        pytest.param("chain", "The first step gives 87; 12 * 7 + 3 + 13 = 87, so the total is 100.",
                     "its working 12 * 7 + 3 + 13 = 87 is wrong (100)", id="wrong-working"),
        pytest.param("chain", "12 * 7 + 3 = 87 = 100 after adding 13.", "its working 87 = 100 is wrong (87)",
                     id="result-equated-to-another-value"),
        pytest.param("large", "2,500 times 4 is 1,000, and Paris is the capital of France.", "it states 1,000,",
                     id="thousands-wrong-magnitude"),
        pytest.param("negative", "5 - 12 is 7, and 30 is 12.5% of 240.", "it states 7,", id="sign-dropped"),
        pytest.param("interest", "   ", "it is empty", id="empty"),
    ],
)
def test_unfaithful_answers_are_rejected_with_a_reason(case: str, answer: str, reason: str) -> None:
    query, results = CASES[case]
    problem = faithfulness_problem(answer, query, results)
    assert problem is not None and problem.startswith(reason), problem
    assert "\n" not in problem


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_template_answer_is_faithful_by_construction(case: str) -> None:
    query, results = CASES[case]
    assert faithfulness_problem(template_answer(results), query, results) is None


def test_the_template_is_faithful_when_one_step_contains_another() -> None:
    query = "What is 1000 / 4, and what is 1000 / 4 + 1, and what is 10% of 1e15"
    results = (_result("c1", Operation.MATH_OP, "What is 1000 / 4", "Answer: 250"),
               _result("c2", Operation.MATH_OP, "what is 1000 / 4 + 1", "Answer: 251"),
               _result("c3", Operation.MATH_OP, "what is 10% of 1e15", "Answer: 100000000000000"))
    assert faithfulness_problem(template_answer(results), query, results) is None


# --- ModelSynthesizer with a scripted test-double backend ------------------------------------------------

FAITHFUL = ("The 10% interest on $1000 is $100. The best savings accounts are high-yield online savings accounts, "
            "credit union savings and money market accounts.")


class Emitted(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)


def _synthesizer(reply: str, *, delay: float = 0.0, budget: float | None = 3.0, fail_after: int | None = None,
                 lock: asyncio.Lock | None = None, proven: bool = True) -> ModelSynthesizer:
    """A synthesizer on the scripted test double; ``proven``: it has kept within its budget once, so that
    queries wait for it (an unproven model is first tried in the background)."""
    rule: dict[str, object] = {"pattern": "", "reply": reply, "delay": delay}
    if fail_after is not None:
        rule["fail_after"] = fail_after
    backend = script([rule], model="scripted-synth")
    synthesizer = ModelSynthesizer(backend, SynthesisConfig(time_budget_s=budget), lock)
    if proven:
        synthesizer.record.record(overran=False)
    return synthesizer


async def _synthesize(synthesizer: ModelSynthesizer, results: Sequence[ChunkResult] = INTEREST_RESULTS,
                      query: str = INTEREST) -> tuple[str, str, Emitted]:
    emitted = Emitted()
    answer, label = await synthesizer.synthesize(query, results, emitted)
    return answer, label, emitted


async def test_a_faithful_model_answer_is_served_in_one_piece() -> None:
    answer, label, emitted = await _synthesize(_synthesizer(FAITHFUL))
    assert (answer, label) == (FAITHFUL, "model:scripted-synth")
    assert emitted == [FAITHFUL]


async def test_an_invented_number_sends_the_template_and_says_why() -> None:
    answer, label, emitted = await _synthesize(_synthesizer(DEMO_ANSWER))
    assert answer == template_answer(INTEREST_RESULTS) == "\n".join(emitted)
    assert label == "template: model answer rejected: it states 0.10, which is in neither the query nor any result"
    assert "0.10" not in "".join(emitted) and "amount of" not in "".join(emitted)


async def test_a_missing_result_sends_the_template() -> None:
    answer, label, emitted = await _synthesize(_synthesizer("The 10% interest on $1000 is $100."))
    assert emitted == [answer] == [template_answer(INTEREST_RESULTS)]
    assert label.startswith("template: model answer rejected: it leaves out the result of c2 ")


async def test_nothing_reaches_the_client_before_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    emitted = Emitted()
    seen_at_check: list[int] = []

    def spy(answer: str, query: str, results: Sequence[ChunkResult]) -> str | None:
        seen_at_check.append(len(emitted))
        return faithfulness_problem(answer, query, results)

    monkeypatch.setattr(synthesize_module, "faithfulness_problem", spy)
    synthesizer = _synthesizer(FAITHFUL, delay=0.005)
    await synthesizer.synthesize(INTEREST, INTEREST_RESULTS, emitted)
    assert seen_at_check == [0]
    assert emitted == [FAITHFUL]


async def test_over_budget_the_generation_is_cancelled_and_the_template_served() -> None:
    lock = asyncio.Lock()
    slow = " ".join(["word"] * 200)  # 200 words at 50 ms each: 10 s, far over the budget
    started = time.perf_counter()
    answer, label, emitted = await _synthesize(_synthesizer(slow, delay=0.05, budget=0.3, lock=lock))
    elapsed = time.perf_counter() - started
    assert label == "template: synthesis over its 0.3 s budget"
    assert emitted == [answer] == [template_answer(INTEREST_RESULTS)]
    assert 0.3 <= elapsed < 1.3
    # The worker thread was told to stop: it frees the model's lock at its next token, not after 10 s.
    await asyncio.wait_for(lock.acquire(), timeout=1.0)
    lock.release()


async def test_after_overruns_the_template_is_served_at_once_and_the_model_probed_in_the_background() -> None:
    synthesizer = ModelSynthesizer(script([{"pattern": "", "reply": " ".join(["word"] * 200), "delay": 0.05}],
                                          model="scripted-synth"),
                                   SynthesisConfig(time_budget_s=0.1, skip_after_overruns=2, probe_every=3))
    synthesizer.record.record(overran=False)  # it kept within its budget once, so queries wait for it
    labels = []
    for _ in range(7):
        started = time.perf_counter()
        _, label, _ = await _synthesize(synthesizer)
        labels.append((label.split(",")[0], time.perf_counter() - started >= 0.1))
        await asyncio.sleep(0.15)  # a background probe has had its budget
    waited, skipped = ("template: synthesis over its 0.1 s budget", True), ("template: synthesis skipped", False)
    # two overruns, then every query skipped at once: nobody waits for the probes (the 5th and the 8th queries)
    assert labels == [waited, waited, skipped, skipped, skipped, skipped, skipped]
    assert synthesizer.record.overruns == 3  # the probe of the 5th query overran too, and was recorded


def test_one_synthesis_within_budget_among_overruns_does_not_bring_the_wait_back() -> None:
    record = OverrunRecord(skip_after=2, probe_every=2)
    record.record(overran=True)
    record.record(overran=True)
    assert not record.worth_waiting()
    assert [record.probe_due(), record.probe_due(), record.probe_due()] == [False, True, False]
    record.record(overran=False)
    assert not record.worth_waiting()  # one success of three tries
    record.record(overran=False)
    assert record.worth_waiting()  # as many within budget as over it: worth a wait again
    assert OverrunRecord(skip_after=0, probe_every=5).worth_waiting()  # 0: always wait
    short = OverrunRecord(skip_after=3, probe_every=5, window=4)
    for overran in (True, True, True, False, False, False):
        short.record(overran)
    assert short.overruns == 1 and short.worth_waiting()  # only the last four tries count


async def test_a_background_probe_within_budget_brings_the_wait_back() -> None:
    synthesizer = _synthesizer(FAITHFUL, delay=0.001, proven=False)
    for _ in range(3):
        synthesizer.record.record(overran=True)  # as a busy machine left it
    assert not synthesizer.record.worth_waiting()
    labels = []
    for _ in range(32):  # the 10th, 20th and 30th skipped queries probe the model in the background
        _, label, _ = await _synthesize(synthesizer)
        labels.append(label)
        await asyncio.sleep(0.05)
    assert all(label.startswith("template: synthesis skipped") for label in labels[:30])
    assert labels[30:] == [synthesizer.label] * 2  # three probes kept within budget: the model is waited for again


async def test_waiting_for_the_models_lock_counts_against_the_budget() -> None:
    lock = asyncio.Lock()
    await lock.acquire()  # the planner is using the model
    try:
        _, label, _ = await _synthesize(_synthesizer(FAITHFUL, budget=0.2, lock=lock))
    finally:
        lock.release()
    assert label == "template: synthesis over its 0.2 s budget"


@pytest.mark.parametrize("budget", [None, 0.0])
async def test_no_budget_waits_for_the_model(budget: float | None) -> None:
    _, label, _ = await _synthesize(_synthesizer(FAITHFUL, delay=0.02, budget=budget))
    assert label == "model:scripted-synth"


async def test_a_failing_model_sends_the_template() -> None:
    answer, label, emitted = await _synthesize(_synthesizer(FAITHFUL, fail_after=3))
    assert (label, emitted) == ("template: synthesis model failed", [template_answer(INTEREST_RESULTS)])
    assert answer == template_answer(INTEREST_RESULTS)


async def test_a_cancelled_query_stops_the_generation() -> None:
    lock = asyncio.Lock()
    synthesizer = _synthesizer(" ".join(["word"] * 200), delay=0.05, budget=None, lock=lock)
    task = asyncio.create_task(_synthesize(synthesizer))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(lock.acquire(), timeout=1.0)
    lock.release()


async def test_one_chunk_needs_no_model() -> None:
    results = INTEREST_RESULTS[:1]
    answer, label, emitted = await _synthesize(_synthesizer(DEMO_ANSWER), results)
    assert (answer, label, emitted) == (results[0].answer, "single-chunk", [results[0].answer])


async def test_the_template_synthesizer_labels_itself() -> None:
    emitted = Emitted()
    answer, label = await TemplateSynthesizer().synthesize(INTEREST, INTEREST_RESULTS, emitted)
    assert (label, emitted) == ("template", [answer])


async def test_a_model_not_yet_proven_is_tried_in_the_background_and_waited_for_once_it_keeps_its_budget() -> None:
    """The demo's first query used to wait its whole 1.5 s budget for a cold model that then overran it."""
    synthesizer = _synthesizer(FAITHFUL, delay=0.001, proven=False)
    started = time.perf_counter()
    first, label, emitted = await _synthesize(synthesizer)
    assert (first, label) == (template_answer(INTEREST_RESULTS),
                              "template: the synthesis model is tried in the background first")
    assert emitted == [first] and time.perf_counter() - started < 0.5
    await asyncio.sleep(0.2)  # the background try keeps within its budget
    assert synthesizer.record.overruns == 0 and synthesizer.record.worth_waiting()
    answer, label, _ = await _synthesize(synthesizer)
    assert (answer, label) == (FAITHFUL, "model:scripted-synth")


async def test_a_model_whose_first_try_overruns_is_not_waited_for_and_tried_again_later() -> None:
    synthesizer = ModelSynthesizer(script([{"pattern": "", "reply": " ".join(["word"] * 200), "delay": 0.05}],
                                          model="scripted-synth"),
                                   SynthesisConfig(time_budget_s=0.1, skip_after_overruns=3, probe_every=3))
    labels = []
    for _ in range(5):
        started = time.perf_counter()
        _, label, _ = await _synthesize(synthesizer)
        labels.append((label.split(",")[0], time.perf_counter() - started < 0.1))
        await asyncio.sleep(0.15)
    first = ("template: the synthesis model is tried in the background first", True)
    skipped = ("template: synthesis skipped", True)
    assert labels == [first, skipped, skipped, skipped, skipped]
    assert synthesizer.record.overruns == 2  # the first query's try and the probe of the 4th (3 skipped since)


def test_without_a_budget_or_a_skip_rule_the_model_is_always_waited_for() -> None:
    assert OverrunRecord(skip_after=0, probe_every=5).worth_waiting()
    assert not OverrunRecord(skip_after=3, probe_every=5).worth_waiting()  # not proven yet
