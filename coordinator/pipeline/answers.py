"""What answers say, read exactly: numbers, normal forms, and the arithmetic a chunk asks for.

One home for answer reading, shared by the stages: dispatch (what a dependent step is told),
assemble (which answers are the same answer), synthesize (is a result kept) and reward (is an answer
right). Pure: no I/O.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from dellm.coordinator.pipeline.operations import PRIOR_REFERENCE, Operation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_MARKER = re.compile(r"\b(?:final answer|answer|result|total)\b\s*(?:is|:|=)", re.I)
_WORD = re.compile(r"[a-z0-9]+")
TEXT_SIMILARITY = 0.6  # word-set Jaccard at or above which two free-text answers count as one
SHORT_ANSWER_WORDS = 3  # a free-text answer of at most this many content words matches a sentence containing it
_FILLER = frozenset({"the", "a", "an", "is", "are", "was", "it", "its", "of", "in", "on", "for", "to", "and",
                     "answer", "by"})  # words that carry no fact
def is_degenerate(text: str) -> bool:
    """True for output that loops ("- 1000 * 0.10 = 1000 - 1000 * 0.10 = 1000 ..."): a small model's
    failure mode, malformed rather than an answer."""
    words = text.lower().split()
    if len(words) < 12:
        return False
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    return len(set(words)) / len(words) < 0.3 or len(set(trigrams)) / len(trigrams) < 0.4


_YES_NO = re.compile(r"^\W*(?:is|are|was|were|do|does|did|can|could|will|would|should|shall|has|have|had)\b", re.I)


def echoes_prompt(text: str, question: str, instruction: str) -> bool:
    """True for a free-text answer of three words or more that says nothing its instruction ("Answer concisely
    with a short list of the most relevant items.") or its question did not: a small model repeating what it
    was asked, no answer. Restating a yes/no question ("Is Paris the capital of France?" -> "Paris is the
    capital of France") is an answer."""
    words = set(_WORD.findall(text.lower()))
    if len(_WORD.findall(text.lower())) < 3:
        return False
    asked = set(_WORD.findall(instruction.lower()))
    if not _YES_NO.match(question):
        asked |= set(_WORD.findall(question.lower()))
    return words <= asked


def parse_number(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def final_number(text: str) -> float | None:
    """The number an answer gives as its result.

    After the last "Answer:"/"result is" marker: the number after its last "=" when it
    shows working ("Answer: 1000 * 0.10 = 100" -> 100), else its first number ("the answer
    is 42, not 7" -> 42). With no marker: the last number in the text.
    """
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        tail = text[markers[-1].end():]
        tail = tail[tail.rfind("=") + 1:] if "=" in tail else tail
        numbers = _NUMBER.findall(tail)
        if numbers:
            return parse_number(numbers[0])
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def format_number(value: float) -> str:
    """A number as an answer states it: 100 rather than 100.0, else 12 significant digits."""
    if math.isfinite(value) and value == round(value):
        return str(round(value))
    return f"{value:.12g}"


def normalize_answer(text: str, operation: Operation, question: str = "") -> str:
    """A key under which equal answers compare equal ("num:100", "text:paris is the capital"). Words of the
    ``question`` an answer repeats are left out when anything else remains: they restate what was asked, not
    what was answered ("The currency of Japan is the yen" and "Japanese currency is the yen", asked "what is
    the currency of Japan?", are "yen" and "japanese yen")."""
    stripped = text.strip()
    words = _WORD.findall(stripped.lower())
    numeric_only = bool(words) and all(w.isdigit() for w in words) and len(_NUMBER.findall(stripped)) == 1
    if operation is Operation.MATH_OP or numeric_only:
        value = final_number(stripped)
        if value is not None:
            return f"num:{format_number(value)}"
    asked = set(_WORD.findall(question.lower())) - _FILLER
    content = [w for w in words if w not in asked]
    return "text:" + " ".join(content if set(content) - _FILLER else words)


def answers_match(a: str, b: str) -> bool:
    """Whether two normalized answers (see normalize_answer) say the same thing."""
    if a == b:
        return True
    if a.startswith("num:") and b.startswith("num:"):
        x, y = float(a[4:]), float(b[4:])
        return math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)
    if a.startswith("text:") and b.startswith("text:"):
        # Compared by content words: "the", "of", "is" shared by any two sentences would make "... is Tokyo"
        # and "... is Kyoto" look alike.
        wa, wb = set(a[5:].split()) - _FILLER, set(b[5:].split()) - _FILLER
        if bool(wa | wb) and len(wa & wb) / len(wa | wb) >= TEXT_SIMILARITY:
            return True
        # A short factoid answer and a sentence that contains it say the same thing ("Tokyo" and "The
        # capital of Japan is Tokyo"): the short one's content words all appear in the other.
        short, long = sorted((wa, wb), key=len)
        return 0 < len(short) <= SHORT_ANSWER_WORDS and short <= long
    return False


def reference_key(operation: Operation, expected: float | None = None, label: str | None = None) -> str | None:
    """The normalized key of a known right answer: an exact value, or a ground-truth label."""
    if expected is not None:
        return f"num:{format_number(expected)}"
    if label:
        return normalize_answer(label, operation)
    return None


# --- exact arithmetic: the one computation a chunk asks for ----------------------------------------
#
# The text is read as tokens (numbers, words, symbols) and every computation in it is found: a written
# expression ("12 * 7 + 3", "15 plus 27", "5 squared"), a phrase ("add 2 and 3", "the sum of 1, 2 and 3",
# "15% of 240", "increase 80 by 5%"), or a step on the result of the step the chunk depends on ("multiply
# the result by 2", "add 10 to that", "double it", "divide by 4"). A reading is a Python expression in
# PRIOR (that earlier result), evaluated by the guarded evaluator below. Text holding anything but
# exactly one computation (none, two, a stray number or operator, a phrase that reads two ways) has no
# exact answer: the check never guesses.

PRIOR = "P"  # the name the earlier result takes in a reading

_TOKEN = re.compile(
    r"(?P<unreadable>(?>\d[\d,]*(?:\.\d+)?)(?:e[+-]?\d|\.\d)[\w.]*|0x[0-9a-f]+)"  # 4e3, 1.2.3, 0x1f
    r"|(?P<ordinal>\d+(?:st|nd|rd|th)\b)"
    r"|(?P<number>\d+(?:,\d+)*(?:\.\d+)?|\.\d+)"
    r"|(?P<word>[a-z]+(?:'[a-z]+)?)"
    r"|(?P<symbol>\*\*|[-+*/^%()=,.;:?!√])"
)
_PLAIN_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+")  # "1,2,3" is not one
_SPELLING = str.maketrans({"×": "*", "÷": "/", "−": "-", "$": " ", "€": " ", "£": " ", "¥": " "})

# Outside the computation, these mean a second (unread) computation: the text has no exact answer.
# So do scale words ("5 million", "3 dozen") and words that ask for another form of the value ("rounded",
# "in binary", "the remainder").
_STRAY_WORDS = frozenset({
    "plus", "minus", "times", "multiplied", "divided", "squared", "cubed", "sqrt", "add", "subtract", "deduct",
    "multiply", "divide", "percent", "increased", "decreased",
    "dozen", "hundred", "thousand", "million", "billion", "trillion",
    "round", "rounded", "rounding", "nearest", "floor", "ceiling", "remainder", "modulo", "mod", "binary", "hex",
    "hexadecimal", "octal", "roman", "fraction", "factorial",
})
# ... and these too when an operand follows them ("double 4", "the sum of").
_OPERATOR_WORDS = frozenset({"double", "triple", "quadruple", "halve", "half", "twice", "thrice", "square",
                             "cube", "root", "power", "sum", "total", "product", "difference", "quotient",
                             "average", "mean", "increase", "decrease", "reduce", "raise", "lower", "over",
                             "x", "+", "-", "*", "/", "^", "**", "%", "√"})
# Words the grammar reads: never a unit after a number ("5 km"), never the noun after "that".
_CONNECTIVES = frozenset({
    "a", "an", "the", "it", "that", "this", "and", "or", "to", "by", "of", "from", "on", "in", "into", "for",
    "with", "then", "than", "is", "are", "equals", "plus", "minus", "times", "x", "over", "divided", "multiplied",
    "squared", "cubed", "raised", "percent", "per", "more", "less", "fewer", "increased", "decreased", "reduced",
    "lowered", "next", "also", "finally", "afterwards", "after", "please", "now",
}) | _STRAY_WORDS
_CLAUSE_ENDS = frozenset({",", ".", ";", ":", "?", "!", "and", "then", "please", "now", "next", "afterwards",
                          "finally"})
_RESULT_NOUNS = frozenset({"result", "answer", "total", "sum", "product", "difference", "quotient", "outcome"})
_VALUE_NOUNS = _RESULT_NOUNS | {"number", "amount", "value", "figure"}
_RESULT_ADJECTIVES = frozenset({"previous", "last", "prior", "final", "resulting", "new", "above"})
_PERCENT_QUALIFIERS = frozenset({"interest", "tax", "tip", "discount", "commission", "fee", "vat", "gratuity",
                                 "sales", "annual", "yearly", "simple", "service", "charge"})

# (phrase, Python operator, precedence level, spelled in words)
_INFIX = (
    ("raised to the power of", "**", "power", True),
    ("to the power of", "**", "power", True),
    ("to the power", "**", "power", True),
    ("raised to", "**", "power", True),
    ("multiplied by", "*", "product", True),
    ("divided by", "/", "product", True),
    ("times", "*", "product", True),
    ("over", "/", "product", True),
    ("plus", "+", "sum", True),
    ("minus", "-", "sum", True),
    ("x", "*", "product", False),
    ("*", "*", "product", False),
    ("/", "/", "product", False),
    ("+", "+", "sum", False),
    ("-", "-", "sum", False),
    ("^", "**", "power", False),
    ("**", "**", "power", False),
)
_POSTFIX = {"squared": "**2", "cubed": "**3"}
_SCALING_VERBS = {"double": "*2", "triple": "*3", "quadruple": "*4", "halve": "/2", "square": "**2", "cube": "**3"}
_CHANGE_VERBS = {"increase": "+", "raise": "+", "decrease": "-", "reduce": "-", "lower": "-",
                 "increased": "+", "raised": "+", "decreased": "-", "reduced": "-", "lowered": "-"}


class _Token(NamedTuple):
    kind: str  # number, word, symbol or ordinal
    text: str


class _Reading(NamedTuple):
    source: str  # a Python expression in PRIOR
    end: int  # the index of the first token after the reading
    computes: bool = True  # False for a bare operand ("12", "the result")


class _AmbiguousError(ValueError):
    """A phrase that reads two ways ("3 plus 4 times 2"): no exact answer, never a guess."""


def _tokens(text: str) -> list[_Token] | None:
    """The text's tokens, lower-cased, currency signs dropped; None when a number cannot be read (4e3)."""
    tokens: list[_Token] = []
    for match in _TOKEN.finditer(text.lower().translate(_SPELLING)):
        kind, token = match.lastgroup or "", match.group()
        if kind == "unreadable" or (kind == "number" and not _PLAIN_NUMBER.fullmatch(token)):
            return None
        tokens.append(_Token(kind, token))
    return tokens


class _Reader:
    """Finds the computations in a token list. Each method reads at token ``i`` and returns what it
    read with the index after it, or None (or no readings)."""

    def __init__(self, tokens: Sequence[_Token]) -> None:
        self._tokens = tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def text(self, i: int) -> str:
        return self._tokens[i].text if 0 <= i < len(self._tokens) else ""

    def kind(self, i: int) -> str:
        return self._tokens[i].kind if 0 <= i < len(self._tokens) else ""

    def phrase(self, i: int, phrase: str) -> int | None:
        words = phrase.split()
        return i + len(words) if all(self.text(i + k) == w for k, w in enumerate(words)) else None

    def clause_end(self, i: int) -> bool:
        return i >= len(self._tokens) or self.text(i) in _CLAUSE_ENDS

    # --- operands ---

    def number(self, i: int) -> _Reading | None:
        """A number: an optional minus sign, the digits, and one unit word skipped ("5 km", "$5")."""
        negative = self.text(i) == "-" and self.kind(i + 1) == "number"
        j = i + 1 if negative else i
        if self.kind(j) != "number":
            return None
        value = float(self.text(j).replace(",", ""))
        j += 1
        if self.kind(j) == "word" and self.text(j) not in _CONNECTIVES:
            j += 1
        return _Reading(f"({-value if negative else value!r})", j, computes=False)

    def reference(self, i: int) -> int | None:
        """The end of a reference to the earlier result: "the result", "that amount", "it", "this"."""
        word = self.text(i)
        if word == "it":
            return i + 1
        if word not in ("the", "that", "this"):
            return None
        j = i + 1
        adjective = self.text(j) in _RESULT_ADJECTIVES
        j += adjective
        nouns = _RESULT_NOUNS if word == "the" and not adjective else _VALUE_NOUNS
        if self.text(j) in nouns:
            if self.text(j + 1) in ("of", "between"):  # "the sum of 3 and 4" is a computation
                return None
            return j + 1 + (self.text(j + 1) == "above")
        bare = word != "the" and not adjective
        if bare and not (self.kind(j) == "word" and self.text(j) not in _CONNECTIVES):  # not "that apple"
            return j
        return None

    def operand(self, i: int) -> _Reading | None:
        """A number, the earlier result, a bracketed expression, or a square root ("sqrt(16)", "√16")."""
        if self.text(i) in ("a", "an") and self.kind(i + 1) == "number":
            i += 1
        number = self.number(i)
        if number is not None:
            return number
        if self.text(i) == "(":
            inner = self.expression(i + 1)
            if inner is None or self.text(inner.end) != ")":
                return None
            return _Reading(f"({inner.source})", inner.end + 1, inner.computes)
        if self.text(i) in ("sqrt", "√"):
            inner = self.operand(i + 1)
            return None if inner is None else _Reading(f"sqrt({inner.source})", inner.end)
        end = self.reference(i)
        return None if end is None else _Reading(PRIOR, end, computes=False)

    def items(self, i: int) -> tuple[list[str], int] | None:
        """Two or more operands: "A and B", "A, B and C", "A, B, and C", "A, B, C"."""
        first = self.operand(i)
        if first is None:
            return None
        sources, end = [first.source], first.end
        while self.text(end) in (",", "and"):
            j = end + 1 + (self.text(end) == "," and self.text(end + 1) == "and")
            item = self.operand(j)
            if item is None:
                break
            sources.append(item.source)
            end = item.end
        return (sources, end) if len(sources) > 1 else None

    def rate(self, i: int) -> _Reading | None:
        """A percentage: "15%", "15 percent", "15 per cent" (the number itself, not yet divided by 100)."""
        number = self.number(i)
        if number is None:
            return None
        end = self.phrase(number.end, "%") or self.phrase(number.end, "percent") or self.phrase(number.end, "per cent")
        return None if end is None else _Reading(number.source, end)

    # --- computations ---

    def expression(self, i: int) -> _Reading | None:
        """Operands joined by infix operators (usual precedence), the first one maybe "squared"/"cubed".
        Spelled operators of different precedence ("3 plus 4 times 2") and "squared" after an operator
        ("2 plus 3 squared") read two ways."""
        first = self.operand(i)
        if first is None:
            return None
        operands: list[str] = [first.source]
        operators: list[str] = []
        end, computes = first.end, first.computes
        levels: set[str] = set()
        spelled = False
        while True:
            if self.text(end) in _POSTFIX:
                if operators:  # "2 plus 3 squared": (2 + 3)^2 or 2 + 3^2
                    raise _AmbiguousError("squared/cubed after an operator")
                operands[-1] = f"({operands[-1]}){_POSTFIX[self.text(end)]}"
                end, computes = end + 1, True
                continue
            infix = next(((symbol, level, worded, after) for phrase, symbol, level, worded in _INFIX
                          if (after := self.phrase(end, phrase)) is not None), None)
            if infix is None:
                break
            symbol, level, worded, after = infix
            right = self.operand(after)
            if right is None:
                break
            operators.append(symbol)
            operands.append(right.source)
            end, computes, spelled = right.end, True, spelled or worded
            levels.add(level)
        if spelled and len(levels) > 1:
            raise _AmbiguousError("spelled operators of different precedence")
        source = operands[0] + "".join(op + x for op, x in zip(operators, operands[1:], strict=True))
        return _Reading(source, end, computes)

    def change(self, base: str, i: int, sign: str) -> _Reading | None:
        """ "by 5%" (base +/- 5% of base) or "by 5" (base +/- 5) after increase/decrease and the like."""
        by = self.phrase(i, "by")
        if by is None:
            return None
        rate = self.rate(by)
        if rate is not None:
            return _Reading(f"{base}{sign}{base}*{rate.source}/100", rate.end)
        amount = self.operand(by)
        return None if amount is None else _Reading(f"{base}{sign}{amount.source}", amount.end)

    def verb(self, i: int) -> list[_Reading]:
        """ "add A and B", "add A to B", "subtract A from B", "multiply A by B", "divide A by B",
        "double A", "square A", "increase A by B%", "raise A to the power of B"; without A
        ("add 10", "multiply by 2", "increase by 5%") the step works on the earlier result."""
        word = self.text(i)
        j = i + 1 + (word in ("add", "sum") and self.text(i + 1) in ("together", "up"))
        adds = word in ("add", "subtract", "deduct")
        share = self.share(j) if adds else None  # "add 20% of the result to it"
        rate = self.rate(j) if adds and share is None else None  # "add 10% to 50", "subtract 10%"
        a = share or self.operand(j)
        found: list[_Reading] = []

        def then(end: int | None, source: Callable[[str], str]) -> None:
            """Read an operand at ``end`` (after "to", "by", ...) and keep source(operand)."""
            b = self.operand(end) if end is not None else None
            if b is not None:
                found.append(_Reading(source(b.source), b.end))

        if word in ("add", "sum", "multiply"):
            listed = self.items(j)
            if listed is not None:
                found.append(_Reading(("*" if word == "multiply" else "+").join(listed[0]), listed[1]))
        if rate is not None:  # "add 10% to 50" is 55; "subtract 10%" takes 10% off the earlier result
            sign = "+" if word == "add" else "-"
            then(self.phrase(rate.end, "to" if word == "add" else "from"), lambda b: f"{b}{sign}{b}*{rate.source}/100")
            if self.clause_end(rate.end):
                found.append(_Reading(f"{PRIOR}{sign}{PRIOR}*{rate.source}/100", rate.end))
        elif word == "add" and a is not None:
            then(self.phrase(a.end, "to"), lambda b: f"{a.source}+{b}")
            more = a.end + (self.text(a.end) == "more")
            if self.clause_end(more) and PRIOR not in a.source:  # "add 10", not "add it" (to what?)
                found.append(_Reading(f"{PRIOR}+{a.source}", more))
        elif word in ("subtract", "deduct") and a is not None:
            then(self.phrase(a.end, "from"), lambda b: f"{b}-{a.source}")
            if self.clause_end(a.end) and PRIOR not in a.source:
                found.append(_Reading(f"{PRIOR}-{a.source}", a.end))
        elif word in ("multiply", "divide"):
            symbol = "*" if word == "multiply" else "/"
            if a is not None:
                then(self.phrase(a.end, "by"), lambda b: f"{a.source}{symbol}{b}")
                if word == "multiply":
                    then(self.phrase(a.end, "times"), lambda b: f"{a.source}*{b}")
            by = self.phrase(j, "by")
            b = self.operand(by) if by is not None else None
            if b is not None and self.clause_end(b.end) and PRIOR not in b.source:
                found.append(_Reading(f"{PRIOR}{symbol}{b.source}", b.end))
        elif word in _SCALING_VERBS and a is not None and (
                self.kind(i - 1) != "number" and self.text(i - 1) not in ("a", "an", "the")):  # not "a square 5 m"
            found.append(_Reading(f"({a.source}){_SCALING_VERBS[word]}", a.end))
        if word in _CHANGE_VERBS:
            changed = self.change(a.source, a.end, _CHANGE_VERBS[word]) if a is not None else None
            if changed is not None:
                found.append(changed)
            by = self.phrase(j, "by")
            amount = self.operand(by) if by is not None else None  # "increase by 5%", not "increase by it"
            changed = self.change(PRIOR, j, _CHANGE_VERBS[word])
            if changed is not None and self.clause_end(changed.end) and amount and PRIOR not in amount.source:
                found.append(changed)
        if word == "raise" and a is not None:
            then(self.phrase(a.end, "to the power of") or self.phrase(a.end, "to"), lambda b: f"{a.source}**{b}")
        return found

    def noun(self, i: int) -> list[_Reading]:
        """ "the sum/product/average of A, B and C", "the difference between A and B", "the quotient
        of A and B", "the square/cube root of A", "the square of A", "half of A", "a third of A",
        "twice A"; "the square root" alone is the earlier result's."""
        j = i + (self.text(i) in ("the", "a", "an", "one"))
        j += self.text(j) == "arithmetic" and self.text(j + 1) == "mean"
        word = self.text(j)
        found: list[_Reading] = []
        joint = self.text(j + 1) == "of" or (word == "difference" and self.text(j + 1) == "between")
        listed = self.items(j + 2) if joint else None
        if listed is not None:
            sources, end = listed
            if word in ("sum", "total"):
                found.append(_Reading("+".join(sources), end))
            elif word == "product":
                found.append(_Reading("*".join(sources), end))
            elif word in ("average", "mean"):
                found.append(_Reading(f"({'+'.join(sources)})/{len(sources)}", end))
            elif word == "difference" and len(sources) == 2:
                found.append(_Reading(f"difference({sources[0]},{sources[1]})", end))
            elif word == "quotient" and len(sources) == 2:
                found.append(_Reading(f"{sources[0]}/{sources[1]}", end))
        if word in ("square", "cube") and self.text(j + 1) == "root":
            function = "sqrt" if word == "square" else "cbrt"
            start = self.phrase(j + 2, "of")
            a = self.operand(start) if start is not None else None
            if a is not None:
                found.append(_Reading(f"{function}({a.source})", a.end))
            elif self.clause_end(j + 2):  # "then take the square root"
                found.append(_Reading(f"{function}({PRIOR})", j + 2))
        elif word in ("square", "cube") and self.text(j + 1) == "of" and j > i:
            a = self.operand(j + 2)
            if a is not None:
                found.append(_Reading(f"({a.source}){_POSTFIX['squared' if word == 'square' else 'cubed']}", a.end))
        fraction = {"half": 2, "third": 3, "quarter": 4, "fourth": 4}.get(word)
        if fraction is not None and (word == "half" or (j > i and self.text(i) != "the")):
            a = self.operand(j + 1 + (self.text(j + 1) == "of"))
            if a is not None and (word == "half" or self.text(j + 1) == "of"):
                found.append(_Reading(f"({a.source})/{fraction}", a.end))
        if word in ("twice", "thrice") and j == i:
            a = self.operand(j + 1)
            if a is not None:
                found.append(_Reading(f"({a.source})*{2 if word == 'twice' else 3}", a.end))
        return found

    def share(self, i: int) -> _Reading | None:
        """ "15% of 240", "10% interest on 1000" (the interest: 100)."""
        rate = self.rate(i)
        if rate is None:
            return None
        k = rate.end
        while self.text(k) in _PERCENT_QUALIFIERS and k < rate.end + 2:
            k += 1
        base = self.operand(k + 1) if self.text(k) in ("of", "on") else None
        return None if base is None else _Reading(f"({rate.source}*{base.source}/100)", base.end)

    def percent(self, i: int) -> list[_Reading]:
        """ "15% of 240", "10% interest on 1000" (the interest), "20% more/less than 50"; "A increased
        by 5%" and "A decreased by 5"."""
        share = self.share(i)
        found: list[_Reading] = [] if share is None else [share]
        rate = self.rate(i)
        if rate is not None:
            for phrase, sign in (("more than", "+"), ("less than", "-"), ("fewer than", "-")):
                than = self.phrase(rate.end, phrase)
                base = self.operand(than) if than is not None else None
                if base is not None:
                    found.append(_Reading(f"{base.source}{sign}{base.source}*{rate.source}/100", base.end))
        a = self.operand(i)
        if a is not None and self.text(a.end) in _CHANGE_VERBS and self.text(a.end).endswith("ed"):
            changed = self.change(a.source, a.end + 1, _CHANGE_VERBS[self.text(a.end)])
            if changed is not None:
                found.append(changed)
        return found

    def computation(self, i: int) -> _Reading | None:
        """The longest computation starting at token i."""
        readings = [*self.verb(i), *self.noun(i), *self.percent(i)]
        expression = self.expression(i)
        if expression is not None and expression.computes:
            readings.append(expression)
        return max(readings, key=lambda reading: reading.end, default=None)

    def stray(self, k: int) -> bool:
        """Whether token k, outside the computation, is a number or an operator (a second computation)."""
        kind, text = self.kind(k), self.text(k)
        if kind in ("number", "ordinal") or (kind == "word" and text in _STRAY_WORDS):
            return True
        if text == "=" or text in _OPERATOR_WORDS:
            follows = self.operand(k + 1) is not None or self.text(k + 1) in ("(", "of", "between", "by", "to")
            return follows or (text != "=" and kind == "symbol" and self.kind(k - 1) == "number")
        return False

    def units(self, start: int, end: int) -> set[str]:
        """The unit words after the numbers in tokens start..end, singular ("km", "hour")."""
        return {self.text(k + 1).removesuffix("s") for k in range(start, end - 1)
                if self.kind(k) == "number" and self.kind(k + 1) == "word" and self.text(k + 1) not in _CONNECTIVES}

    def continues(self, end: int) -> bool:
        """Whether the computation ending at ``end`` goes on ("add 5 and 3 to it", "divide 8 by 2 by 2",
        "1/4 of his salary")."""
        if self.text(end) == "of":
            return True
        return self.text(end) in ("to", "by", "from", "than", "into") and self.operand(end + 1) is not None


@functools.lru_cache(maxsize=4096)
def _reading(text: str) -> ast.Expression | None:
    """The one computation ``text`` asks for, as a Python expression in PRIOR; None without exactly one."""
    tokens = _tokens(text)
    if tokens is None:
        return None
    reader = _Reader(tokens)
    spans: list[tuple[int, _Reading]] = []
    i = 0
    try:
        while i < len(reader):
            found = reader.computation(i)
            if found is None:
                i += 1
                continue
            spans.append((i, found))
            i = found.end
    except (_AmbiguousError, RecursionError):  # RecursionError: hundreds of nested brackets
        return None
    if len(spans) != 1:
        return None
    start, reading = spans[0]
    outside = [k for k in range(len(reader)) if not start <= k < reading.end]
    if reader.continues(reading.end) or any(reader.stray(k) for k in outside):
        return None
    if len(reader.units(start, reading.end)) > 1:  # "5 km plus 300 m"
        return None
    try:
        return ast.parse(reading.source, mode="eval")
    except (SyntaxError, RecursionError):
        return None


def _cube_root(x: float) -> float:
    root = math.cbrt(x)
    whole = round(root)
    return float(whole) if whole**3 == x else root  # libm's cbrt(27) is 3.0000000000000004


def _difference(a: float, b: float) -> float:
    """ "The difference between A and B": A - B; when A < B it may mean B - A too, so it is not read."""
    if a < b:
        raise ValueError("the difference of a smaller and a larger number reads two ways")
    return a - b


_BINARY: Mapping[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_FUNCTIONS: Mapping[str, Callable[..., float]] = {"sqrt": math.sqrt, "cbrt": _cube_root, "difference": _difference}
MAX_EXPONENT = 64  # a larger power is refused ("2 ^ 100000")


def _evaluate(node: ast.AST, prior: float | None) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, prior)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == PRIOR:
        if prior is None:
            raise ValueError("the text works on an earlier result, and none is given")
        return prior
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, prior), _evaluate(node.right, prior)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError("exponent too large")
        value = _BINARY[type(node.op)](left, right)
        if not isinstance(value, float):  # (-8) ** (1/3) is complex
            raise ValueError("not a real number")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, prior)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        return _FUNCTIONS[node.func.id](*(_evaluate(arg, prior) for arg in node.args))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def _uses_prior(reading: ast.Expression) -> bool:
    return any(isinstance(node, ast.Name) and node.id == PRIOR for node in ast.walk(reading))


@functools.lru_cache(maxsize=4096)  # read three times per chunk (prompt, settling, reward): parse once
def exact_answer(text: str, prior: float | None = None) -> float | None:
    """The value of the one computation a chunk asks for, when it can be read exactly; else None.

    ``prior`` is the result of the step the chunk depends on (its last dependency): "multiply the result
    by 2", "add 10 to that", "double it" and "divide by 4" work on it, and without it they are None.
    Reads written expressions ("12 * 7 + 3", "15 plus 27", "2 to the power of 10", "5 squared"),
    phrases ("add 2 and 3", "subtract 5 from 20", "the average of 2, 4 and 9", "15% of 240", "10%
    interest on $1000", "increase 80 by 5%", "the square root of 144", "half of 30") with numbers
    written in digits ("1,000", "-5", "$20", "5 km"). Word problems ("Janet has 16 eggs..."), two
    computations, a stray number and a phrase that reads two ways are None: never a guess.
    """
    reading = _reading(text)
    if reading is None:
        return None
    try:
        value = _evaluate(reading, prior)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def reads_arithmetic(text: str, dependent: bool = False) -> bool:
    """Whether ``exact_answer`` reads ``text`` as one computation. A dependent chunk's computation may
    work on the earlier result ("multiply the result by 2"), which is unknown when the query is planned."""
    reading = _reading(text)
    return reading is not None and (dependent or not _uses_prior(reading))


def refers_to_prior(text: str) -> bool:
    """Whether ``text`` reads as one computation on an earlier result ("double it", "add 10")."""
    reading = _reading(text)
    return reading is not None and _uses_prior(reading)


def with_prior_value(text: str, prior: float) -> str:
    """A dependent step's arithmetic asked on its own, the earlier result written in: "subtract that from 1200"
    after 180 is "subtract 180 from 1200"; a step with no word pointing back ("divide by 4") is asked
    "Starting from 180: divide by 4". Only a rewording that reads as the same computation is used."""
    value = format_number(prior)
    expected = exact_answer(text, prior)
    written = PRIOR_REFERENCE.sub(value, text)
    if written != text and expected is not None and exact_answer(written) == expected:
        return written
    return f"Starting from {value}: {text}"


def prior_value(dependency_answers: Sequence[str]) -> float | None:
    """The earlier result a dependent chunk's arithmetic works on: the last dependency's final number."""
    if not dependency_answers:
        return None
    value = final_number(dependency_answers[-1])
    return value if value is not None and math.isfinite(value) else None


# --- Worked steps' arithmetic, re-run ------------------------------------------------------------------------
# A small model reasoning in words slips at arithmetic it writes out: "175 diamonds + 140 rubies + 280
# emeralds = 695 gems" (GSM8K #67, twice from the 1.5B coder), and its answer line repeats the slip. The
# coordinator re-runs each written equation "<arithmetic> = <number>" in order, carries a corrected value into
# the later steps that use the wrong one, and judges the answer by where the corrected steps lead.

_LATEX_WORDS = re.compile(r"\\(?:text|mathrm|mathbf)\{[^}]*\}")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_LATEX_SYMBOLS = {"\\times": "*", "\\cdot": "*", "\\div": "/", "×": "*", "÷": "/", "−": "-"}
_WORKED_TOKEN = re.compile(r"\d+(?:\.\d+)?|[A-Za-z_][\w/'’-]*|[-+*/()]|\S")
_EQUALS = re.compile(r"(?<![<>!=])=(?!=)")  # not "<=", ">=", "!=" nor "=="
_HAS_OPERATION = re.compile(r"\d\s*[-+*/]\s*\(?\s*\d")
_STATED = re.compile(r"\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
_WHOLE_WORDS = frozenset({"a", "A"})  # one-letter words that are not variables


def _worked_arithmetic(segment: str) -> str | None:
    """The arithmetic written in ``segment`` ("175 diamonds + 140 rubies" -> "175 + 140"): numbers, operators
    and parentheses, its words left out; None when it holds a variable ("2x + 3"), which is algebra."""
    segment = segment.rsplit(":", 1)[-1]  # after a label ("Step 3: 175 + 140")
    segment = _LATEX_FRACTION.sub(r" ((\1) / (\2)) ", segment)
    for symbol, operator_ in _LATEX_SYMBOLS.items():
        segment = segment.replace(symbol, operator_)
    segment = _LATEX_WORDS.sub(" ", segment).replace("$", " ").replace("\\", " ")
    segment = re.sub(r"(\d),(\d{3})", r"\1\2", segment)
    segment = re.sub(r"(\d(?:\.\d+)?)\s*%", r"(\1/100)", segment)
    segment = re.sub(r"(?<=[\d)])\s*[xX]\s*(?=[\d($])|(?<=\s)[xX]\s+(?=[\d($])", " * ", segment)  # "3 x 4 weeks"
    kept = []
    for token in _WORKED_TOKEN.findall(segment):
        if token[0].isdigit() or token in "+-*/()":
            kept.append(token)
        elif len(token) == 1 and token.isalpha() and token not in _WHOLE_WORDS:
            return None
    while kept and kept[-1] in "+-*/(":
        kept.pop()
    while kept and kept[0] in "+-*/":  # a list's bullet ("- 18 / 3 = 6"), or a sign this cannot tell from one
        kept.pop(0)
    expression = " ".join(kept)
    try:
        ast.parse(expression, mode="eval")
    except SyntaxError:  # two numbers side by side, or a stray operator: not arithmetic this reads
        return None
    return expression


def worked_equations(text: str) -> list[tuple[str, float]]:
    """Each written equation of ``text`` whose left side is arithmetic and whose right side states a number:
    (the arithmetic, the number stated). In a chain "a + b = c * d = e" only "c * d = e" states a value."""
    found = []
    for line in text.splitlines():
        sides = _EQUALS.split(line)
        for left, right in itertools.pairwise(sides):
            expression = _worked_arithmetic(left)
            if expression is None or not _HAS_OPERATION.search(expression):
                continue
            if _HAS_OPERATION.search(_worked_arithmetic(right) or ""):
                continue  # the chain goes on: its next "=" states the value
            stated = _STATED.match(_LATEX_WORDS.sub(" ", right).replace("\\", " ").replace("{", " "))
            value = parse_number(stated.group(1)) if stated else None
            if value is not None:
                found.append((expression, value))
    return found


def _slipped(expression: str, computed: float, stated: float) -> bool:
    if math.isclose(computed, stated, rel_tol=5e-3, abs_tol=0.011):  # "= 3.33" for 10 / 3
        return False
    # A division stated in whole units ("35 / 15 = 2" full boxes) is rounding, not a slip.
    return not ("/" in expression and stated in (math.floor(computed), math.ceil(computed)))


def rerun_worked_steps(text: str, final: float | None) -> tuple[float | None, list[str]]:
    """``final`` (the answer ``text`` states) after its equations are re-run in order, each corrected value
    carried into the later equations that use the stated one; and a note per corrected equation."""
    corrections: dict[float, float] = {}
    notes = []
    for expression, stated in worked_equations(text):
        if corrections:
            expression = re.sub(r"\d+(?:\.\d+)?",
                                lambda m: format_number(corrections.get(float(m.group(0)), float(m.group(0)))),
                                expression)
        try:
            computed = _evaluate(ast.parse(expression, mode="eval"), None)
            signed = _evaluate(ast.parse(f"-{expression}", mode="eval"), None)  # its first number negative
        except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
            continue
        if math.isfinite(computed) and _slipped(expression, computed, stated) and _slipped(expression, signed, stated):
            corrections[stated] = computed
            notes.append(f"{expression} is {format_number(computed)}, not {format_number(stated)}")
    notes = list(dict.fromkeys(notes))
    if final is None or final not in corrections:
        return final, notes
    return corrections[final], notes
