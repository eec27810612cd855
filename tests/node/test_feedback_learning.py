"""Nodes that learn, part one: verified feedback becomes few-shot examples in the node's prompts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from dellm.coordinator.config import DispatchConfig
from dellm.node import state
from dellm.node.backends.base import BackendDescription, GenerationRequest, TokenPiece
from dellm.node.backends.prompting import chat_messages, plain_prompt
from dellm.node.config import NodeConfig
from dellm.node.daemon import RunningNode, computes_nothing, fit_examples, node_info, start_node
from dellm.node.state import (
    MAX_EXAMPLE_CANDIDATES,
    FeedbackEntry,
    FeedbackStore,
    FewShotExample,
    tfidf_similarities,
    word_tokens,
)
from dellm.protos import dellm_pb2, dellm_pb2_grpc

MATH = "\nGive the final number on the last line as 'Answer: <number>'."


def _entry(prompt: str, *, verdict: str = "CORRECT", source: str = "exact_check", answer: str = "an answer",
           correct_answer: str = "", at: float = 0.0) -> FeedbackEntry:
    return FeedbackEntry(query_id="q", chunk_id="c", prompt=prompt, answer=answer, verdict=verdict, reward=0.1,
                         correct_answer=correct_answer, fitness=0.5, source=source,
                         received_at=at or time.time())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    feedback = FeedbackStore(tmp_path / "feedback.sqlite3")
    yield feedback
    feedback.close()


# --- the evidence rule -------------------------------------------------------------------------------------------

EVIDENCE_CASES = [
    # (source, verdict, answer, correct_answer, expected example answer or None)
    ("exact_check", "CORRECT", "7 * 6 = 42\nAnswer: 42", "42", "7 * 6 = 42\nAnswer: 42"),
    ("label", "CORRECT", "Paris", "", "Paris"),
    ("user", "CORRECT", "Paris", "", "Paris"),
    ("exact_check", "WRONG", "7 * 6 = 41", "42", "Answer: 42"),
    ("user", "WRONG", "Lyon", "Paris", "Answer: Paris"),
    ("label", "WRONG", "Lyon", "Answer: Paris", "Answer: Paris"),  # no doubled label
    ("user", "WRONG", "Lyon", "", None),  # wrong, and nobody said what is right
    ("exact_check", "CORRECT", "   ", "", None),  # nothing to show
    ("vote", "CORRECT", "Paris", "Paris", None),  # a majority is no evidence
    ("vote", "WRONG", "Lyon", "Paris", None),
    ("failure", "WRONG", "", "42", None),
    ("none", "UNKNOWN", "Paris", "", None),
    ("exact_check", "UNKNOWN", "Paris", "", None),
]


@pytest.mark.parametrize(("source", "verdict", "answer", "correct_answer", "expected"), EVIDENCE_CASES)
def test_only_entries_with_evidence_become_examples(store: FeedbackStore, source: str, verdict: str, answer: str,
                                                    correct_answer: str, expected: str | None) -> None:
    store.add(_entry("What is the capital of France?", verdict=verdict, source=source, answer=answer,
                     correct_answer=correct_answer))
    examples = store.verified_examples("What is the capital city of France?", k=3)
    pairs = store.training_pairs()
    if expected is None:
        assert examples == []
        assert pairs == []
    else:
        assert [(e.prompt, e.answer) for e in examples] == [("What is the capital of France?", expected)]
        assert 0.0 < examples[0].similarity <= 1.0
        assert pairs == [("What is the capital of France?", expected)]


# --- ranking -----------------------------------------------------------------------------------------------------

STORED = [
    "What is 15% of 200?" + MATH,
    "What is 10% of 1000?" + MATH,
    "Name three rivers in France.",
    "Compare Python and Rust for command line tools.",
    "Write a haiku about autumn leaves.",
]

RANKING_CASES = [
    # (query, k, expected prompts in order)
    ("What is 10% of 500?" + MATH, 2, [STORED[1], STORED[0]]),  # shares "10", then only the template
    ("Name three rivers in Spain.", 1, [STORED[2]]),
    ("Compare Rust and Go for command line tools.", 1, [STORED[3]]),
    ("Write a haiku about autumn.", 5, [STORED[4]]),  # the others share no word: similarity 0 is left out
    ("zebra quantum xylophone", 3, []),
    ("", 3, []),
]


@pytest.mark.parametrize(("query", "k", "expected"), RANKING_CASES)
def test_examples_are_ranked_by_similarity(store: FeedbackStore, query: str, k: int, expected: list[str]) -> None:
    for index, prompt in enumerate(STORED):
        store.add(_entry(prompt, answer=f"answer {index}", at=1000.0 + index))
    examples = store.verified_examples(query, k)
    assert [e.prompt for e in examples] == expected
    assert all(isinstance(e, FewShotExample) and e.similarity > 0 for e in examples)
    assert [e.similarity for e in examples] == sorted((e.similarity for e in examples), reverse=True)


def test_k_caps_the_examples_and_zero_gives_none(store: FeedbackStore) -> None:
    for index in range(6):
        store.add(_entry(f"What is {index} + {index}?" + MATH, answer=f"Answer: {2 * index}", at=1000.0 + index))
    assert len(store.verified_examples("What is 9 + 9?" + MATH, 4)) == 4
    assert store.verified_examples("What is 9 + 9?" + MATH, 0) == []


def test_new_feedback_is_seen_by_the_next_lookup(store: FeedbackStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TF-IDF index is cached between lookups, and rebuilt once feedback arrives. (A build counts as cheap
    here whatever the machine's load: a slow build is rebuilt only after a pause, which a loaded CI machine
    made this test meet.)"""
    monkeypatch.setattr(state, "CHEAP_INDEX_BUILD_S", 60.0)
    store.add(_entry("Name a river in France.", answer="The Seine.", at=1000.0))
    assert [e.answer for e in store.verified_examples("Name a river in Spain.", 2)] == ["The Seine."]
    assert [e.answer for e in store.verified_examples("Name a river in Spain.", 2)] == ["The Seine."]
    store.add(_entry("Name a river in Spain, please.", answer="The Ebro.", at=2000.0))
    assert [e.answer for e in store.verified_examples("Name a river in Spain.", 2)] == ["The Ebro.", "The Seine."]


def test_an_expensive_index_is_rebuilt_at_most_at_its_share_of_the_time(
    store: FeedbackStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(state, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    store.add(_entry("Name a river in France.", answer="The Seine.", at=1000.0))
    store.verified_examples("Name a river in Spain.", 2)
    store._index_cost_s = 0.5  # as if that build had taken half a second: the next waits 10 s
    store.add(_entry("Name a river in Spain, please.", answer="The Ebro.", at=2000.0))

    clock[0] += 5.0
    assert [e.answer for e in store.verified_examples("Name a river in Spain.", 2)] == ["The Seine."]
    clock[0] += 5.0
    assert [e.answer for e in store.verified_examples("Name a river in Spain.", 2)] == ["The Ebro.", "The Seine."]


def test_ties_go_to_the_newer_entry(store: FeedbackStore) -> None:
    store.add(_entry("Tell me about owls.", answer="older", at=1000.0))
    store.add(_entry("Tell me about hawks.", answer="newer", at=2000.0))
    examples = store.verified_examples("Tell me about birds.", 1)
    assert [e.answer for e in examples] == ["newer"]


def test_the_question_itself_is_never_its_own_example(store: FeedbackStore) -> None:
    """Asked again, a question must be answered by the model, not copied from memory (honest benchmarks)."""
    question = "What is 10% of 1000?" + MATH
    store.add(_entry(question, answer="Answer: 100", at=1000.0))
    store.add(_entry("What is 10% of 2000?" + MATH, answer="Answer: 200", at=1001.0))
    for asked in (question, "  what is 10%   OF 1000?" + MATH.upper() + "\n"):
        examples = store.verified_examples(asked, 5)
        assert [e.prompt for e in examples] == ["What is 10% of 2000?" + MATH]


def test_tfidf_weighs_rare_words_above_common_ones() -> None:
    documents = ["the cat sat on the mat", "the dog sat on the log", "the bird flew"]
    scores = tfidf_similarities("a cat and a dog", documents)
    assert scores[0] > 0 and scores[1] > 0 and scores[2] == 0.0  # "the", "a", "and" are stop words
    # One shared word each; word-set Jaccard would tie them, TF-IDF prefers the rarer word.
    common, rare, _, _ = tfidf_similarities("big cat", ["big mouse", "small cat", "big bird", "big dog"])
    assert rare > common > 0.0  # "big" is in most documents yet still counts a little
    assert tfidf_similarities("what is the", documents) == [0.0, 0.0, 0.0]
    assert tfidf_similarities("The Cat!", ["the cat"]) == pytest.approx([1.0])
    assert word_tokens("Is 10% of $1,000 — Café_Bar?") == ["is", "10", "of", "1", "000", "café", "bar"]


def test_only_the_latest_candidates_are_ranked(store: FeedbackStore) -> None:
    store.add(_entry("unique ancient walrus question", answer="too old", at=1.0))
    for index in range(MAX_EXAMPLE_CANDIDATES):
        store.add(_entry(f"filler question number {index}", at=1000.0 + index))
    assert store.verified_examples("walrus", 1) == []
    assert ("unique ancient walrus question", "too old") in store.training_pairs()  # training reads them all


# --- training pairs ----------------------------------------------------------------------------------------------


def test_training_pairs_keep_the_latest_usable_entry_per_prompt(store: FeedbackStore) -> None:
    store.add(_entry("What is 6 * 7?" + MATH, verdict="WRONG", answer="41", correct_answer="42", at=1000.0))
    store.add(_entry("What is 6 * 7?" + MATH, verdict="CORRECT", answer="6 * 7 = 42\nAnswer: 42", at=2000.0))
    store.add(_entry("Capital of Italy?", verdict="CORRECT", answer="Rome", source="user", at=1500.0))
    store.add(_entry("Capital of Italy?", verdict="WRONG", answer="Milan", source="user", at=2500.0))  # no truth
    store.add(_entry("Capital of Spain?", verdict="CORRECT", answer="Madrid", source="label", at=3000.0))
    store.add(_entry("Capital of Spain?", verdict="CORRECT", answer="Barcelona", source="vote", at=4000.0))
    assert store.training_pairs() == [
        ("Capital of Spain?", "Madrid"),
        ("What is 6 * 7?" + MATH, "6 * 7 = 42\nAnswer: 42"),
        ("Capital of Italy?", "Rome"),  # the later WRONG carried no correct answer, so it hides nothing
    ]
    assert store.training_pairs(limit=1) == [("Capital of Spain?", "Madrid")]
    assert store.count() == 6


def test_examples_are_deduplicated_by_prompt(store: FeedbackStore) -> None:
    store.add(_entry("Spell the word necessary.", answer="necesary", verdict="WRONG", correct_answer="necessary",
                     at=1000.0))
    store.add(_entry("Spell the word necessary.", answer="n-e-c-e-s-s-a-r-y", at=2000.0))
    examples = store.verified_examples("Spell the word separate.", 3)
    assert [(e.prompt, e.answer) for e in examples] == [("Spell the word necessary.", "n-e-c-e-s-s-a-r-y")]


def test_fit_examples_keeps_the_best_that_fit() -> None:
    examples = [("a" * 10, "b" * 10), ("c" * 30, "d"), ("e", "f")]
    assert fit_examples(examples, 1000) == tuple(examples)
    assert fit_examples(examples, 25) == (examples[0],)
    assert fit_examples(examples, 5) == ()


# --- prompting ---------------------------------------------------------------------------------------------------


def test_chat_messages_show_examples_as_earlier_turns() -> None:
    request = GenerationRequest("What is 3 + 4?", system="Be brief.",
                                examples=(("What is 1 + 1?", "Answer: 2"), ("What is 2 + 5?", "2 + 5 = 7")))
    assert chat_messages(request) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "Answer: 2"},
        {"role": "user", "content": "What is 2 + 5?"},
        {"role": "assistant", "content": "2 + 5 = 7"},
        {"role": "user", "content": "What is 3 + 4?"},
    ]
    assert chat_messages(GenerationRequest("Hi", examples=(("Hello?", "Hello."),)))[0] == {
        "role": "user", "content": "Hello?"}


def test_plain_prompt_shows_examples_as_question_answer_blocks() -> None:
    request = GenerationRequest("What is 3 + 4?",
                                examples=(("What is 1 + 1?", "Answer: 2"), ("List two colours.", "red\n\nblue ")))
    assert plain_prompt(request) == (
        "Question: What is 1 + 1?\nAnswer: 2\n\n"
        "Question: List two colours.\nAnswer: red\nblue\n\n"  # no blank line inside: it is the stop sequence
        "Question: What is 3 + 4?\nAnswer:"
    )
    with_system = GenerationRequest("Q?", system="Be brief.", examples=(("P?", "A."),))
    assert plain_prompt(with_system) == "Be brief.\n\nQuestion: P?\nAnswer: A.\n\nQuestion: Q?\nAnswer:"


# --- the Generate path, over real gRPC ---------------------------------------------------------------------------


@dataclass
class RecordingBackend:
    """Test double: records every GenerationRequest it gets and answers "ok"."""

    requests: list[GenerationRequest]

    def describe(self) -> BackendDescription:
        return BackendDescription(backend="scripted", model="recording")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        self.requests.append(request)
        yield TokenPiece("ok", (-0.1,))
        yield TokenPiece("", finish_reason="stop")

    def close(self) -> None:
        return None


@pytest.fixture
async def recording_node(tmp_path: Path, store: FeedbackStore,
                         request: pytest.FixtureRequest) -> AsyncIterator[tuple[RunningNode, RecordingBackend]]:
    backend = RecordingBackend([])
    few_shot = getattr(request, "param", 2)
    config = NodeConfig(listen="127.0.0.1:0", name="learner", state_dir=tmp_path / "state", few_shot=few_shot)
    node = await start_node(backend, node_info("l" * 32, "learner", backend), store, config)
    try:
        yield node, backend
    finally:
        await node.stop(0.1)


async def _generate(address: str, prompt: str, operation: int = dellm_pb2.OPERATION_UNSPECIFIED,
                    system: str = "") -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dellm_pb2_grpc.NodeServiceStub(channel)
        chunks = [c async for c in stub.Generate(dellm_pb2.GenerateRequest(query_id="q", chunk_id="c1",
                                                                           prompt=prompt, operation=operation,
                                                                           system=system),
                                                 timeout=10)]
    return "".join(c.text for c in chunks)


async def _feedback(address: str, prompt: str, answer: str, verdict: dellm_pb2.Verdict, source: str,
                    correct_answer: str = "") -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        await dellm_pb2_grpc.NodeServiceStub(channel).Feedback(
            dellm_pb2.NodeFeedbackRequest(query_id="q0", chunk_id="c0", prompt=prompt, answer=answer,
                                          verdict=verdict, reward=0.1, correct_answer=correct_answer, fitness=0.5,
                                          source=source), timeout=10)


async def test_generate_puts_verified_feedback_before_the_prompt(
        recording_node: tuple[RunningNode, RecordingBackend], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dellm.node.daemon")
    node, backend = recording_node
    await _feedback(node.address, "What is 10% of 1000?" + MATH, "10% of 1000 = 100\nAnswer: 100",
                    dellm_pb2.CORRECT, "exact_check")
    await _feedback(node.address, "What is 25% of 80?" + MATH, "25% of 80 = 25", dellm_pb2.WRONG, "exact_check",
                    correct_answer="20")
    await _feedback(node.address, "What is 30% of 90?" + MATH, "27", dellm_pb2.CORRECT, "vote")  # no evidence
    await _feedback(node.address, "Name a river in France.", "The Seine.", dellm_pb2.CORRECT, "user")

    assert await _generate(node.address, "What is 10% of 500?" + MATH) == "ok"
    assert backend.requests[-1].prompt == "What is 10% of 500?" + MATH
    assert backend.requests[-1].examples == (
        ("What is 10% of 1000?" + MATH, "10% of 1000 = 100\nAnswer: 100"),
        ("What is 25% of 80?" + MATH, "Answer: 20"),
    )
    assert "chunk c1: 2 few-shot examples" in caplog.text

    await _generate(node.address, "What is 10% of 1000?" + MATH)  # asked again: not answered from memory
    assert [p for p, _ in backend.requests[-1].examples] == ["What is 25% of 80?" + MATH]

    await _generate(node.address, "Summarise the plot of Hamlet.")  # nothing similar is known
    assert backend.requests[-1].examples == ()


async def test_code_examples_teach_only_math_chunks(recording_node: tuple[RunningNode, RecordingBackend]) -> None:
    """A verified program (math chunks answer with code) must not teach a fact chunk to reply `answer = ...`."""
    node, backend = recording_node
    program = "```python\nanswer = 15 / 100 * 240\n```"
    await _feedback(node.address, "Calculate 15% of 240, then name the capital of Japan", program,
                    dellm_pb2.CORRECT, "exact_check")
    await _feedback(node.address, "Name the capital of Italy", "Rome", dellm_pb2.CORRECT, "user")

    await _generate(node.address, "Calculate 15% of 300", dellm_pb2.MATH_OP)
    assert (("Calculate 15% of 240, then name the capital of Japan", program)) in backend.requests[-1].examples
    await _generate(node.address, "Name the capital of Japan", dellm_pb2.SEARCH_OP)
    examples = backend.requests[-1].examples
    assert examples and all("answer =" not in answer and "```" not in answer for _, answer in examples)


@pytest.mark.parametrize("recording_node", [0], indirect=True)
async def test_few_shot_zero_sends_no_examples(recording_node: tuple[RunningNode, RecordingBackend]) -> None:
    node, backend = recording_node
    await _feedback(node.address, "What is 10% of 1000?" + MATH, "Answer: 100", dellm_pb2.CORRECT, "exact_check")
    await _generate(node.address, "What is 10% of 500?" + MATH)
    assert backend.requests[-1].examples == ()


def test_a_correction_of_worked_steps_is_not_turned_into_a_bare_example(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.sqlite3")
    try:
        worked = "Step 1: she has 16 eggs. Step 2: she eats 3 and bakes 4, so 9 are left. " * 3 + "Answer: 9"
        store.add(FeedbackEntry("q1", "c1", "Janet's ducks lay 16 eggs... how much?", worked, "WRONG", -0.05,
                                "18", 0.45, "label", 1.0))
        store.add(FeedbackEntry("q2", "c1", "What is 37 * 12?", "Answer: 440", "WRONG", -0.05, "444", 0.45,
                                "exact_check", 2.0))
        assert store.training_pairs() == [("What is 37 * 12?", "Answer: 444")]
    finally:
        store.close()


async def test_a_program_prompt_gets_no_example_that_only_states_a_number(
        recording_node: tuple[RunningNode, RecordingBackend]) -> None:
    """`answer = 36`, verified right, would teach the model to compute in its head and write the result."""
    node, backend = recording_node
    ask = "\nReply with only a one-line ```python code block of the form: answer = <expression>."
    literal, program = "```python\nanswer = 36\n```", "```python\nanswer = 240 * 0.15\n```"
    await _feedback(node.address, "Calculate 15% of 240" + ask, literal, dellm_pb2.CORRECT, "exact_check")
    await _feedback(node.address, "Calculate 25% of 240" + ask, "Answer: 60", dellm_pb2.CORRECT, "exact_check")
    await _feedback(node.address, "Calculate 35% of 240" + ask, program, dellm_pb2.CORRECT, "exact_check")

    await _generate(node.address, "Calculate 45% of 240" + ask, dellm_pb2.MATH_OP)
    assert [answer for _, answer in backend.requests[-1].examples] == [program]


async def test_a_program_asked_for_by_the_system_prompt_gets_no_example_that_only_states_a_number(
        recording_node: tuple[RunningNode, RecordingBackend]) -> None:
    """Checked arithmetic is the bare task, its instruction in the system prompt: still a program prompt."""
    node, backend = recording_node
    system = DispatchConfig().expression_system_prompt
    literal, program = "answer = 36", "```python\nanswer = 240 * 0.15\n```"
    await _feedback(node.address, "Calculate 15% of 240", literal, dellm_pb2.CORRECT, "exact_check")
    await _feedback(node.address, "Calculate 35% of 240", program, dellm_pb2.CORRECT, "exact_check")

    await _generate(node.address, "Calculate 45% of 240", dellm_pb2.MATH_OP, system=system)
    assert [answer for _, answer in backend.requests[-1].examples] == [program]


@pytest.mark.parametrize(("answer", "nothing"), [
    ("answer = 36", True), ("```python\nanswer = 36\n```\nAnswer: 36", True), ("Answer: $1,200.50", True),
    ("answer = 240 * 0.15", False), ("```python\nx = 3\nanswer = x * 12\n```\nAnswer: 36", False),
    ("It is 36 because 6 * 6 = 36", False), ("", False),
])
def test_computes_nothing(answer: str, nothing: bool) -> None:
    assert computes_nothing(answer) is nothing
