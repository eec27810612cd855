"""One table of operation types: what marks a chunk as each kind, how complex it starts, what a node is
asked, and whether its answer can be checked exactly.

The decomposer (classification, complexity), the prompts (the instruction in the system prompt) and the
model planner's prompt (the list of operations) all read this table. Adding an operation is one entry
here, in :class:`Operation` and :data:`OPERATIONS`, and one value in dellm.proto's ``Operation`` enum
(a test checks that the two agree). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Operation(StrEnum):
    MATH_OP = "MATH_OP"
    SEARCH_OP = "SEARCH_OP"
    COMPARE_OP = "COMPARE_OP"
    GENERATE_OP = "GENERATE_OP"
    GENERAL_OP = "GENERAL_OP"


@dataclass(frozen=True)
class OperationSpec:
    operation: Operation
    keywords: re.Pattern[str] | None  # what marks a chunk as this kind; None for the fallback
    base_complexity: float  # complexity before the chunk's length and numbers add to it
    instruction: str  # how the node is asked to answer, in the chunk's system prompt (prompts.system_prompt_for)
    checked_exactly: bool  # the coordinator can compute the right answer (arithmetic)
    # Tokens an answer needs at most (a cap on DispatchConfig.max_tokens): a short list is ~40 tokens, and
    # every token past what the answer needs is time the user waits. None: the configured budget.
    max_tokens: int | None = None
    # Its answer is a fact that no check can judge ("the capital of Egypt", "who wrote Hamlet"): however short
    # the question, it is asked of RouteConfig.redundancy nodes of different models (route.redundancy_for),
    # since one small model alone is wrong often and nothing else would notice.
    facts: bool = False


# Arithmetic context for the word operators: a word counts only next to a number or a reference to an
# earlier result ("15 plus 27", "multiply the result by 2", "the sum of 3 and 4"), so that "add milk to
# the list", "a double room" and "the difference between cats and dogs" are not arithmetic.
_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_REF = (r"\b(?:it\b|(?:the|that|this)\s+(?:previous\s+|last\s+)?(?:result|answer|total|sum|product|difference)|"
        r"(?:that|this)\s+(?:number|amount|value)|(?:that|this)(?=\s*(?:$|[.,;!?]|(?:then|and|by|to|from)\b)))")
_OPERAND = rf"(?:{_NUM}|{_REF})"
# The words that point at the earlier result in a dependent step ("multiply the result by 2", "subtract that").
PRIOR_REFERENCE = re.compile(_REF, re.I)
_ARITHMETIC_PAIR = rf"(?:{_NUM}\s+and\s+{_OPERAND}|{_REF}\s+and\s+{_NUM})"  # "10 and 4", "it and 4"
_ARITHMETIC_WORDS = (
    # A plus B, A times B, A to the power of B, ...: a number on one side at least
    rf"{_NUM}(?:\s+[a-z]+)?\s+(?:plus|minus|times|multiplied\s+by|divided\s+by|over|x|to\s+the\s+power\s+of|"
    rf"raised\s+to)\s+\(?{_OPERAND}",
    rf"{_REF}\s+(?:plus|minus|times|multiplied\s+by|divided\s+by|to\s+the\s+power\s+of)\s+{_NUM}",
    rf"{_OPERAND}(?:\s+[a-z]+)?\s+(?:squared|cubed)\b",
    # add/subtract/multiply/divide/increase ... with their operands, or "by N" on the earlier result
    rf"\b(?:add|subtract|deduct)\s+{_OPERAND}(?:\s*%|\s+[a-z]+)?\s+(?:to|from|and|,)\s*{_OPERAND}",
    rf"\b(?:add|subtract|deduct)\s+{_NUM}\s*%?(?:\s+more)?\s*(?:$|[.,;!?]|(?:then|and)\b)",
    rf"\b(?:multiply|divide)\s+{_OPERAND}(?:\s+[a-z]+)?\s+(?:by|and|times|,)\s*{_OPERAND}",
    rf"\b(?:multiply|divide|increase|decrease|reduce|raise|lower)\s+(?:{_OPERAND}\s+)?by\s+{_OPERAND}",
    rf"\braise\s+{_OPERAND}\s+to\b",
    rf"\b(?:double|triple|quadruple|halve|twice|thrice|square|cube)\s+{_OPERAND}",
    # the sum/product/difference/quotient/average of numbers, roots, fractions, percentages
    rf"\b(?:sum|total|product|quotient|average|mean)\s+of\s+{_OPERAND}\s*(?:,|and)\s*{_OPERAND}",
    rf"\bdifference\s+(?:between|of)\s+{_ARITHMETIC_PAIR}",
    rf"\b(?:square|cube)\s+root\s+of\s+{_OPERAND}|\bsqrt\s*\(|√\s*\d",
    r"\b(?:take|find|compute|calculate)\s+the\s+(?:square|cube)\s+root\b",
    rf"\b(?:half|third|quarter)\s+(?:of\s+)?{_OPERAND}",
    rf"{_NUM}\s*(?:%|percent|per\s+cent)\s+(?:[a-z]+\s+)?(?:of|on|more\s+than|less\s+than)\s+{_OPERAND}",
)

# A sentence ends at ". ", "? ", "! " or "; " before a capital, but not after a title ("Mrs. Cruz") nor inside a
# number ("3.5 pounds").
SENTENCE_BREAK = re.compile(
    r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bJr\.)(?<=[.?!;])\s+(?=[A-Z])")

# A question that asks for a magnitude ("how many ...", "how far ..."): its answer is never below zero.
MAGNITUDE_QUESTION = re.compile(r"\bhow\s+(?:far|long|much|many|old|tall|big|fast|often|high|heavy|large)\b", re.I)

# A question of quantity about two or more given numbers is a word problem ("... at 10 miles per hour ... from 1 to
# 4 PM ... How long does it take him?", "... lost 5 right before the comparison, how many does Bobby have?");
# "How long is the Nile?" is not.
# A number in digits or in words ("16", "1,000", "three", "a dozen", "half").
NUMBER = (r"\b(?:\d[\d,.]*|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
          r"fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|"
          r"hundred|thousand|million|half|twice|thrice|double|triple|dozen|third|quarter)\b")
_QUANTITY_WITH_NUMBERS = (
    rf"^(?=(?:[\s\S]*?{NUMBER}){{2}})[\s\S]*\b(?:how\s+(?:much|many|long|far|old|fast|tall|high|heavy|big|large|"
    r"often|soon)|what\s+(?:percentage|fraction|time)|what(?:'s|’s|\s+is|\s+are|\s+was|\s+were)\s+"
    r"(?:(?:the|his|her|their|its)\s+)?(?:total|combined|net|annual|monthly|weekly|daily|average|distance|profit|"
    r"cost|price|weight|speed|area|volume|perimeter|amount|number|maximum|minimum|percentage|chance|probability|"
    r"ratio|depth|height|length|width|age|value|sum|difference))\b")
_WORD_PROBLEM = re.compile(_QUANTITY_WITH_NUMBERS, re.I)

# In classification order: the first whose keywords match a chunk's text gives its operation.
_TABLE = (
    OperationSpec(
        Operation.COMPARE_OP,
        re.compile(rf"\b(compare|comparison|versus|vs\.?|difference between(?!\s+{_ARITHMETIC_PAIR})|better than|"
                   r"pros and cons|which is (?:better|cheaper|faster))\b", re.I),
        0.5, "Compare concisely and state which is better and why in two or three sentences.", False),
    OperationSpec(
        Operation.MATH_OP,
        re.compile(r"\b(calculate|compute|how (?:much|many)|what is \d|solve|sum|total|"
                   r"percent|interest|multiply|divide|average)\b|\d\s*[-+*/x×÷%^]\s*\d|\d%|"
                   + "|".join(_ARITHMETIC_WORDS), re.I),
        0.45, "Give the final number on the last line as 'Answer: <number>'.", True),
    OperationSpec(
        Operation.SEARCH_OP,
        re.compile(r"\b(find|search|look up|lookup|list|which|where|best|top|recommend|who|when)\b", re.I),
        0.35, "Answer concisely with a short list of the most relevant items.", False, 64, facts=True),
    OperationSpec(
        Operation.GENERATE_OP,
        re.compile(r"\b(write|generate|draft|compose|create|summari[sz]e|explain|describe|"
                   r"translate|suggest|plan)\b", re.I),
        0.4, "Keep it brief.", False),
    OperationSpec(Operation.GENERAL_OP, None, 0.3, "Answer concisely.", False, 64, facts=True),
)

OPERATIONS: Mapping[Operation, OperationSpec] = MappingProxyType({spec.operation: spec for spec in _TABLE})


# A question of fact, asked: "what is the freezing point of water?", "name the capital of Japan", "who wrote
# Hamlet". Not a request for text about something ("Tell me about Paris"), nor a greeting.
_FACT_QUESTION = re.compile(
    r"^\W*(?:(?:and|also|then|now|please)\s+)*(?:what|who|whom|whose|which|when|where|how|name|"
    r"(?:tell|give)\s+me\s+(?:the|which|who|what|when|where|how)|is|are|was|were|does|do|did|can)\b|\?\s*$",
    re.I)


def asks_for_a_fact(text: str, operation: Operation) -> bool:
    """Whether a chunk is a question of fact no check can judge (``OperationSpec.facts``): a search, or a
    general chunk phrased as a question."""
    spec = OPERATIONS[operation]
    return spec.facts and (operation is Operation.SEARCH_OP or bool(_FACT_QUESTION.search(text.strip())))


def classify(text: str) -> Operation:
    """MATH_OP for a question of quantity about two or more given numbers (a word problem); else the operation
    of the first table entry whose keywords the text matches; GENERAL_OP otherwise."""
    if _WORD_PROBLEM.search(text):  # before "compare" and "which": "..., how many does Bobby have?"
        return Operation.MATH_OP
    for spec in _TABLE:
        if spec.keywords is not None and spec.keywords.search(text):
            return spec.operation
    return Operation.GENERAL_OP


def operation_names() -> str:
    """``MATH_OP, SEARCH_OP, ...``: the operations as the planner's prompt lists them."""
    return ", ".join(operation.value for operation in Operation)
