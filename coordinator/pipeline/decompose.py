"""Stage 1: split a query into chunks with an operation, a complexity and dependencies.

Rule-based: sequence words ("then", "after that", "based on this", ...) split the query
into steps that depend on the step before, except a step after a word of order alone ("then") that is
self-contained (a question about something it names, or a computation with all its numbers, pointing at
nothing earlier):
it runs at once, in parallel; "and"/"also" between two clauses that each
start with an action verb split into independent steps. A query the rules cannot split
is one chunk. A chunk whose arithmetic the coordinator reads exactly (answers.exact_answer) is a
MATH_OP chunk; otherwise the operations table's keywords type it. Pure: no I/O.
"""

from __future__ import annotations

import re

from dellm.coordinator.config import DecomposeConfig
from dellm.coordinator.errors import InvalidQueryError
from dellm.coordinator.pipeline.answers import reads_arithmetic, refers_to_prior
from dellm.coordinator.pipeline.operations import (
    MAGNITUDE_QUESTION,
    NUMBER,
    OPERATIONS,
    SENTENCE_BREAK,
    Operation,
    classify,
)
from dellm.coordinator.types import Chunk, Plan

_SEQUENCE = re.compile(
    r"(?:[,;.]\s*|\s+)(?:and\s+)?(?:then|after\s+that|afterwards|based\s+on\s+(?:this|that|the\s+result))\s*,?\s+"
    r"|[,;]\s*(?:and\s+)?finally\s*,?\s+",
    re.IGNORECASE,
)
# A question word opens an instruction only in a question: "When Freda cooks tomatoes, they lose half their
# volume." is a statement of a word problem.
_QUESTION_WORD = re.compile(r"^(?:what|how|who|which|when|where|why)\b", re.I)

_ACTION_START = re.compile(
    r"^(calculate|compute|find|search|look up|list|compare|write|generate|draft|compose|create|summari[sz]e|"
    r"explain|describe|translate|suggest|solve|estimate|tell|give|name|what|how|who|which|when|where|why|"
    r"work out|figure out|evaluate|determine)\b",
    re.I,
)
# An arithmetic verb with its operand ("Add 5 and 3", "Multiply the result by 2", "Double it") starts an
# instruction; "Square tiles cost $2" and "Double rooms..." stay statements.
_ARITHMETIC_START = re.compile(
    r"^(?:add|sum|subtract|deduct|multiply|divide|double|triple|halve|square|cube|increase|decrease|reduce|raise)\s+"
    r"(?:-?\$?\d|\(|by\b|it\b|that\b|this\b|the\s+(?:result|answer|sum|product|total|difference|previous|last)\b)",
    re.I,
)
_LEADING_FILLER = re.compile(r"^(?:first(?:ly)?|please|now|ok(?:ay)?)\b\s*,?\s*", re.I)
_CONJUNCTION = re.compile(r"(\s*(?:,\s*)?\b(?:and\s+also|and|also|as\s+well\s+as)\b\s+|\s*,\s+)", re.I)
_REFERS_BACK = re.compile(
    r"\b(it|its|them|the result|the answer|this (?:result|amount|number|value)|that (?:result|amount|number|value))\b",
    re.I,
)
_LEADING_CONJUNCTION = re.compile(r"^\s*(?:and\s+also|also|and|plus)\b\s*,?\s*", re.I)
_NAMED_SUBJECT = re.compile(r"(?<=\s)(?!I\b)[A-Z]\w*|\d[\d.,]*")  # a name after the first word, or a number
_BUILDS_ON = re.compile(r"\bbased\s+on\b", re.I)
# Words that may point at something earlier in the query: a step holding one is never taken as self-contained.
_ANAPHORA = re.compile(
    r"\b(?:it|its|they|them|their|there|those|these|that|this|he|she|his|her|him|one|ones|same|such|above|"
    r"result|answer|previous|earlier|former|latter)\b",
    re.I,
)
_LEADING_SEQUENCE = re.compile(
    r"^\s*(?:and\s+)?(?:(?:then|after\s+that|afterwards|finally|based\s+on\s+(?:this|that|the\s+result))\b|next\s*,)"
    r"\s*,?\s*",
    re.I,
)




def estimate_tokens(text: str) -> int:
    """Rough token count: words plus separate punctuation and digits groups."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def estimate_complexity(text: str, operation: Operation) -> float:
    tokens = estimate_tokens(text)
    numbers = len(re.findall(r"\d+(?:\.\d+)?", text))
    score = OPERATIONS[operation].base_complexity + min(0.3, max(0, tokens - 8) * 0.02) + min(0.2, numbers * 0.05)
    return round(min(1.0, score), 3)


def _clean(part: str) -> str:
    return part.strip(" \t\n,;.").strip()


def _starts_action(text: str) -> bool:
    """Whether text is an instruction: "find ...", "what ...", "Add 5 and 3", "First, add 5 and 3"."""
    text = _LEADING_FILLER.sub("", text)
    return bool(_ACTION_START.match(text) or _ARITHMETIC_START.match(text))


def _split_conjunctions(step: str) -> list[str]:
    """Split "find X and compare Y" into parts at each "and"/"also"/comma followed by an action ("compare",
    "what", "add 5 ..."), or between two computations ("999 plus 1 and 50 times 50"). A piece that starts
    no action stays with the part before it ("Add 250 and 175", "the average of 12, 18 and 27, and what
    is ..."); a step that starts as a statement ("Tom has 3 apples and ...") is not split."""
    pieces = _CONJUNCTION.split(step)  # text, separator, text, ...
    if not _starts_action(_clean(pieces[0])):
        return [step]
    parts = [pieces[0]]
    for separator, piece in zip(pieces[1::2], pieces[2::2], strict=True):
        text = _clean(piece)
        if text and (_starts_action(text) or (reads_arithmetic(_clean(parts[-1])) and reads_arithmetic(text))):
            parts.append(piece)
        else:
            parts[-1] += separator + piece
    return [_clean(p) for p in parts if _clean(p)]


def _own_steps(pieces: list[str], separators: list[str]) -> list[str]:
    """``pieces`` split at sequence words, each joined back to the one before unless it starts an instruction
    or a question: "... charged her the full price and then charged her 10% less, calculate the total" is one
    step of a word problem, not two. A joined piece leaves an empty string in its place (so that indices still
    match ``separators``)."""
    steps = list(pieces)
    for index in range(1, len(steps)):
        if steps[index].strip() and not _starts_action(_clean(steps[index])):
            last = max(i for i in range(index) if steps[i] or i == 0)
            steps[last] = f"{steps[last]}{separators[index]}{steps[index]}"
            steps[index] = ""
    return steps


def _units(text: str) -> list[tuple[str, str]]:
    """(context, instruction) pairs: statement sentences ("Janet has 16 eggs.") are kept, unsplit,
    as the context of the next instruction or question."""
    units: list[tuple[str, str]] = []
    context: list[str] = []
    for sentence in SENTENCE_BREAK.split(text):
        body = _clean(_LEADING_CONJUNCTION.sub("", _LEADING_SEQUENCE.sub("", sentence)))
        question = sentence.rstrip().endswith("?")
        if not question and (not _starts_action(body) or _QUESTION_WORD.match(_LEADING_FILLER.sub("", body))):
            context.append(sentence.strip())
            continue
        units.append((" ".join(context), sentence.strip()))
        context = []
    if context:  # statements after the last instruction belong to it
        if units:
            units[-1] = (units[-1][0], " ".join([units[-1][1], *context]))
        else:
            units.append(("", " ".join(context)))
    return units


def operation_of(text: str, dependent: bool = False) -> Operation:
    """A chunk's operation: MATH_OP whenever the coordinator can compute its arithmetic exactly ("Add 2
    and 3", "What is 15% of 240", and on a dependent chunk "multiply the result by 2", whose earlier
    result is not known yet); otherwise its keywords decide (see classify). A question with no number in it
    and no earlier result to work on is asked as a fact, whatever its words ("How many days are in a leap
    year?": nothing to compute, a fact to know, so two models are asked rather than programs written)."""
    if reads_arithmetic(text, dependent):
        return Operation.MATH_OP
    operation = classify(text)
    if operation is Operation.MATH_OP and not dependent and not re.search(NUMBER, text, re.I):
        return Operation.GENERAL_OP
    return operation


def self_contained(text: str, earlier: str = "") -> bool:
    """Whether a step after "then" needs nothing from the steps before it (``earlier``, the query's text
    before it): a question about something it names that the earlier steps do not ("..., then name the
    capital of Japan"; not "..., then what is Charlie's profit?" in Charlie's story), or a computation
    whose numbers are all written in it, with no word that could point back ("it", "that", "the result"),
    in a query that is not a story's questions ("how much ...?", here or before). Such a step runs at once
    instead of waiting for the step before; anything else ("then write a summary", "then compare the
    options") still waits, since what it works on may be the earlier answer."""
    if _ANAPHORA.search(text) or MAGNITUDE_QUESTION.search(f"{earlier} {text}"):  # a story's steps ("how much")
        return False
    operation = operation_of(text)
    if operation is Operation.MATH_OP:
        return reads_arithmetic(text)  # every operand is written here (refers_back caught "add 8")
    if operation not in (Operation.SEARCH_OP, Operation.GENERAL_OP):
        return False
    names = {name.lower().rstrip(".,") for name in _NAMED_SUBJECT.findall(text)}
    mentioned = {word.lower().rstrip(".,") for word in re.findall(r"[\w.,]+", earlier)}
    return bool(names) and not names & mentioned  # "find the ingredients" may mean the earlier recipe's


def check_query(query: str, config: DecomposeConfig) -> None:
    """InvalidQueryError, saying why, for an empty, whitespace-only or over-long query."""
    if not query.strip():
        raise InvalidQueryError("the query is empty")
    if len(query) > config.max_query_chars:
        raise InvalidQueryError(f"the query is {len(query)} characters; the maximum is {config.max_query_chars}")


def decompose(query: str, config: DecomposeConfig | None = None) -> Plan:
    """Plan ``query``: sequential steps depend on the previous step, conjunct parts run in parallel."""
    config = config or DecomposeConfig()
    check_query(query, config)
    text = " ".join(query.split())

    # (parts, depends_on_previous_step) per step; the parts of one step run in parallel. A part after the
    # first is (text, False) when it needs nothing from the step before ("..., then divide it by 5, and what
    # is the capital of Canada?"), else (text, True), waiting as its step does.
    steps: list[tuple[list[tuple[str, bool]], bool]] = []
    for context, instruction in _units(text):
        leading = _LEADING_SEQUENCE.match(instruction)
        unit_sequential = bool(leading) and not context
        body = _LEADING_CONJUNCTION.sub("", _LEADING_SEQUENCE.sub("", instruction))
        # The words before each step: "based on this" says the step uses the one before; "then" only orders.
        separators = [leading.group(0) if leading else "", *(m.group(0) for m in _SEQUENCE.finditer(body))]
        for index, step in enumerate(_own_steps(_SEQUENCE.split(body), separators)):
            step = _clean(step)
            if not step:
                continue
            if index == 0 and context:
                step = f"{context} {step}"
            sequential = index > 0 or unit_sequential
            builds_on = bool(_BUILDS_ON.search(separators[index]))
            for position, part in enumerate(_split_conjunctions(step)):
                refers_back = bool(_REFERS_BACK.search(part)) or refers_to_prior(part)  # "multiply by 2"
                earlier = text[: text.find(part)] if part in text else text
                if position == 0 or refers_back:  # "find X and compare it": the second waits
                    waits = sequential and (builds_on or not self_contained(part, earlier))
                    steps.append(([(part, True)], bool(steps) and (waits or refers_back)))
                else:
                    steps[-1][0].append((part, builds_on or not self_contained(part, earlier)))

    flat = [(level, part, waits) for level, (members, _) in enumerate(steps) for part, waits in members]
    if len(flat) > config.max_chunks:
        last_level = flat[config.max_chunks - 1][0]
        rest = " ".join(part for _, part, _ in flat[config.max_chunks - 1 :])
        flat = [*flat[: config.max_chunks - 1], (last_level, rest, True)]

    chunks: list[Chunk] = []
    ids_by_level: dict[int, list[str]] = {}
    for number, (level, part, waits) in enumerate(flat, start=1):
        chunk_id = f"c{number}"
        depends_on: tuple[str, ...] = ()
        if waits and steps[level][1] and level - 1 in ids_by_level:
            depends_on = tuple(ids_by_level[level - 1])
        operation = operation_of(part, dependent=bool(depends_on))
        chunks.append(
            Chunk(
                chunk_id=chunk_id,
                operation=operation,
                text=part,
                token_count=estimate_tokens(part),
                complexity=estimate_complexity(part, operation),
                depends_on=depends_on,
            )
        )
        ids_by_level.setdefault(level, []).append(chunk_id)
    if not chunks:  # only punctuation: keep the user's text as one general chunk
        chunks.append(Chunk("c1", Operation.GENERAL_OP, text, estimate_tokens(text), 0.3))
    return Plan(query=text, chunks=tuple(chunks))


def validate_plan(plan: Plan) -> None:
    """Reject a plan with duplicate ids, a missing dependency or a cycle (before any dispatch)."""
    ids = [c.chunk_id for c in plan.chunks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"plan has duplicate chunk ids: {ids}")
    known = set(ids)
    for chunk in plan.chunks:
        missing = [d for d in chunk.depends_on if d not in known]
        if missing:
            raise ValueError(f"chunk {chunk.chunk_id} depends on unknown chunks {missing}")
    deps = {c.chunk_id: set(c.depends_on) for c in plan.chunks}
    done: set[str] = set()
    while deps:
        ready = [cid for cid, d in deps.items() if d <= done]
        if not ready:
            raise ValueError(f"plan has a dependency cycle among {sorted(deps)}")
        for cid in ready:
            done.add(cid)
            del deps[cid]
