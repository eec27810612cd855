"""The sandbox that runs model-written arithmetic programs and reads one number out of them.

Small model nodes answer a math chunk with a short Python program; the coordinator runs it here and
votes over the executed values. The program is hostile input: a program that is refused, fails,
loops or allocates without bound is a wrong answer for that node (an ``Execution`` with ``ok=False``
and a ``kind``), never an exception or a stall in the coordinator.

Why a child process and not asteval or RestrictedPython
-------------------------------------------------------
Both libraries run the code inside the coordinator's own process and thread. RestrictedPython
restricts names and attributes at compile time and leaves CPU and memory to the caller entirely;
asteval caps a few known operations (big exponents, long strings) but one C-level operation it did
not foresee still freezes or exhausts the coordinator, and a single call cannot be interrupted from
Python. Both have had published escapes, and an escape in-process lands next to the coordinator's
keys and sockets. Only the operating system can take a runaway computation away from a process, so
the real boundary is a child process with rlimits: it costs one interpreter start-up per program and
needs nothing outside the standard library (no dependency to keep patched). Refusing programs in the
parent first is still worth doing: a refusal is cheap, has a clear reason, and keeps obviously
hostile code from ever reaching an interpreter. So, defence in depth, three layers:

1. **Check** (``check_program``, in the parent): ``ast`` allow-list. Numbers, strings, names,
   operators, assignments, containers, subscripts, calls, ``def``/``lambda``/``return``, ``if``,
   ``for``, ``while``, comprehensions, f-strings, ``assert``/``raise``; ``import math`` and
   ``from math import ...`` only. Refused: every name or attribute starting with ``_`` (dunder
   escapes; ``_`` itself and reading ``__name__`` are allowed), attributes outside a fixed list of
   math names and list/str/dict/set/number methods (so no ``format_map``, ``gi_frame``, ``mro``),
   ``.format`` except on a string literal whose fields are bare (``{}``, ``{0}``, ``{x:.2f}``), introspection
   and I/O names (``open``, ``exec``, ``getattr``, ``type``, ...), ``class``, ``try``, ``with``,
   ``global``, ``yield``, ``await``, ``match`` (class patterns read attributes by string), decorators,
   attribute assignment and deletion, bytes, format widths over 1000, programs over 4000 characters
   or with syntax trees deeper than 100 (parser and compiler recursion bombs).
2. **Guards** (an ``ast.NodeTransformer``, in the parent): ``**``, ``*``, ``<<`` and ``%`` become
   calls of guard functions that refuse integer results over 100,000 bits, sequence repetition over
   a million items and ``%``-format widths over 1000; ``pow``, ``round``, ``range``, ``print`` and
   ``math.factorial/comb/perm`` are guarded versions; every ``while`` body starts with a tick that
   stops the program after a million iterations in total. The tree is compiled in the parent (with
   line numbers intact) and sent to the child marshalled.
3. **Child process** (the real boundary): ``python -I -S -B -c RUNNER`` (isolated mode, no site,
   empty environment, cwd a fresh empty temp dir, its own session so that the whole process group
   can be killed). Before the program runs, the child (as root: first drops to ``nobody`` with no
   supplementary groups) lowers its own rlimits: CPU 2 s (SIGKILL a second later), address space
   256 MiB, file size 0, open files 3 (stdin/stdout/stderr are already open, so no new file, pipe or
   socket can be made), processes 0 (no fork; root ignores this, one more reason to drop to
   ``nobody``), no core files. Builtins are a small dict (no ``__import__``, ``open``,
   ``__build_class__``). The parent adds a wall-clock deadline and kills the process group on
   timeout or cancellation, so no child outlives its ``run``.

   The limits are set by the runner itself, after its imports, rather than in ``preexec_fn``:
   ``preexec_fn`` is documented as unsafe in a process with threads (gRPC's core runs threads and
   the child could deadlock between fork and exec), and setting them before reading untrusted code is
   just as strong. Starting the interpreter also stays outside the 256 MiB limit.

The program's value, in order: the variable ``answer``, then ``result`` (functions skipped), then the
value of the last top-level expression statement executed, then the last number printed; the first
that is a finite int/float (not bool) or a numeric string (``"1,234.5"``, ``"$12"``, ``"15%"``) wins.
Otherwise the execution fails with kind ``no_value`` ("the program computed no number").

Cost, measured on this two-core machine while other work shared it (load ~4): a typical program takes
a median of 28-32 ms per execution over 50 sequential runs (p10 ~22 ms, p90 32-47 ms), nearly all of
it the interpreter start-up (``python -I -S -c pass`` alone: 12 ms) and the process round trip.
Check, guard and compile take 0.1 ms for a two-line program and 10-25 ms for a dense 4000-character
one (done in a worker thread). With ``max_concurrent=2`` (the default: one child per core), 50 runs
started at once take ~20 ms each.

Limits worth knowing: when the coordinator does not run as root, the child runs as the same user, so a
program that got through layers 1 and 2 could still signal or read what that user can (rlimits stop
writes, forks and new files, not signals; there is no filesystem or network namespace). Augmented
``a[i] *= x`` evaluates ``a`` and ``i`` twice. A guard error for size reports kind ``memory``, the
range and while-loop caps report ``timeout``.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import json
import logging
import marshal
import math
import os
import pwd
import re
import shutil
import signal
import string
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import CodeType
from typing import Literal, Protocol

logger = logging.getLogger(__name__)

ExecutionKind = Literal["", "refused", "timeout", "memory", "error", "no_value"]


@dataclass(frozen=True)
class SandboxLimits:
    """Every bound the sandbox enforces, with the reason for each default."""

    cpu_seconds: float = 2.0  # RLIMIT_CPU of the child, rounded up to whole seconds (the kernel's unit)
    wall_seconds: float = 3.0  # the parent kills the child's process group after this long, start-up included
    memory_bytes: int = 256 * 2**20  # RLIMIT_AS of the child: allocations past it raise MemoryError
    max_program_chars: int = 4000  # longer programs are refused unparsed; model programs are a few lines
    max_ast_depth: int = 100  # deeper syntax trees are refused: parser and compiler recursion bombs
    max_output_chars: int = 10_000  # printing more fails the program (kind "memory")
    max_int_bits: int = 100_000  # int results of **, *, <<, pow(), factorial beyond this (~30,000 digits) fail
    max_sequence_items: int = 1_000_000  # str/list/tuple repetition (seq * n) beyond this many items fails
    max_range: int = 10_000_000  # range() longer than this fails: bounds for-loops and sum(range(...))
    max_while_iterations: int = 1_000_000  # while-loop iterations per program, all loops together
    max_format_width: int = 1000  # widths and precisions in f-strings, .format literals, % and round()
    child_user: str = "nobody"  # a root coordinator's child drops to this user first; "" keeps root (not advised)
    max_reply_bytes: int = 256 * 1024  # bytes kept from the child's stdout and stderr; the rest is dropped


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class Execution:
    """What running one program gave: a finite number, or why there is none.

    ``kind`` is "" on success, else "refused" (layer 1 or the size checks: never executed),
    "timeout" (CPU, wall clock, while-loop or range bound), "memory" (address space, big-number or
    repetition guards, output cap), "error" (the program raised, or did not compile) or "no_value"
    (it ran but computed no number). ``error`` starts with the kind.
    """

    ok: bool
    value: float | None
    error: str = ""
    kind: ExecutionKind = ""
    output: str = ""  # what the program printed (capped); for logs

    @classmethod
    def success(cls, value: float, output: str = "") -> Execution:
        return cls(ok=True, value=value, output=output)

    @classmethod
    def failure(cls, kind: ExecutionKind, detail: str, output: str = "") -> Execution:
        return cls(ok=False, value=None, error=f"{kind}: {detail}", kind=kind, output=output)


class ProgramRunner(Protocol):
    """Runs one model-written program and returns its number or why there is none; never raises."""

    async def run(self, program: str) -> Execution: ...


class ScriptedRunner:
    """Test double for ``ProgramRunner``: returns a scripted ``Execution`` per program text.

    Programs it has no script for get ``default`` (an "error" execution unless given). Every program
    asked for is recorded in ``programs``.
    """

    def __init__(self, executions: Mapping[str, Execution], default: Execution | None = None) -> None:
        self._executions = dict(executions)
        self._default = default or Execution.failure("error", "no scripted execution for this program")
        self.programs: list[str] = []

    async def run(self, program: str) -> Execution:
        self.programs.append(program)
        return self._executions.get(program, self._default)


# --------------------------------------------------------------------------------------------------
# Extracting the program from a model's answer


_FENCED_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n`]*\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = frozenset({"python", "python3", "py"})


def extract_program(answer_text: str) -> str | None:
    """The program in a model's answer: the last ```python block, else the last untagged ``` block.

    Blocks tagged with another language (``output``, ``text``, ``json``) are not programs; an
    unterminated block (the answer was cut off) is not taken. None when there is no program.
    """
    tagged: list[str] = []
    untagged: list[str] = []
    for match in _FENCED_BLOCK.finditer(answer_text):
        tag, body = match.group(1).lower(), textwrap.dedent(match.group(2)).strip("\n")
        if not body.strip():
            continue
        if tag in _PYTHON_TAGS:
            tagged.append(body)
        elif not tag:
            untagged.append(body)
    if tagged:
        return tagged[-1]
    return untagged[-1] if untagged else None


# --------------------------------------------------------------------------------------------------
# Layer 1: the allow-list check


_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Module, ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Pass, ast.Break, ast.Continue,
    ast.If, ast.For, ast.While, ast.FunctionDef, ast.Return, ast.Delete, ast.Assert, ast.Raise,
    ast.Import, ast.ImportFrom, ast.alias, ast.arguments, ast.arg, ast.keyword, ast.Lambda, ast.IfExp,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
    ast.expr_context, ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Starred,
    ast.Tuple, ast.List, ast.Dict, ast.Set, ast.Call, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.JoinedStr, ast.FormattedValue, ast.NamedExpr,
)  # fmt: skip

_CONSTRUCT_NAMES: dict[type[ast.AST], str] = {
    ast.ClassDef: "class", ast.Try: "try", ast.TryStar: "try/except*", ast.With: "with",
    ast.AsyncWith: "async with", ast.AsyncFor: "async for", ast.AsyncFunctionDef: "async def",
    ast.Global: "global", ast.Nonlocal: "nonlocal", ast.Yield: "yield", ast.YieldFrom: "yield from",
    ast.Await: "await", ast.Match: "match",
}  # fmt: skip

# Names refused wherever they appear, with or without a builtin behind them in the child.
_FORBIDDEN_NAMES = frozenset({
    "exec", "eval", "compile", "open", "input", "getattr", "setattr", "delattr", "hasattr", "vars",
    "globals", "locals", "breakpoint", "help", "type", "object", "dir", "super", "memoryview",
    "bytearray", "bytes", "classmethod", "staticmethod", "property", "exit", "quit", "id",
    "copyright", "credits", "license",
})  # fmt: skip

_MATH_NAMES = frozenset(name for name in dir(math) if not name.startswith("_"))

# Attributes a program may use: math's names and the plain methods of numbers and containers.
# An allow-list, not a deny-list: anything new or obscure (format_map, gi_frame, mro) is refused.
_ALLOWED_ATTRIBUTES = _MATH_NAMES | frozenset({
    # list
    "append", "extend", "insert", "pop", "remove", "index", "count", "sort", "reverse", "copy", "clear",
    # dict and set
    "keys", "values", "items", "get", "update", "setdefault", "popitem", "add", "discard", "union",
    "intersection", "difference", "symmetric_difference", "issubset", "issuperset", "isdisjoint",
    # str
    "split", "rsplit", "strip", "lstrip", "rstrip", "join", "replace", "upper", "lower", "title",
    "capitalize", "startswith", "endswith", "find", "rfind", "isdigit", "isnumeric", "isdecimal",
    "isalpha", "isalnum", "isspace", "splitlines", "partition", "rpartition",
    # int and float
    "is_integer", "bit_length", "real", "imag", "numerator", "denominator", "as_integer_ratio",
    "conjugate",
})  # fmt: skip

_FORMAT_FIELD = re.compile(r"\w*")
_DIGITS = re.compile(r"\d+")


class _Refused(Exception):
    """A layer-1 refusal; its text is the reason given to the caller."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)


class _ProgramChecker(ast.NodeVisitor):
    """Walks a parsed program and raises ``_Refused`` at the first construct outside the allow-list."""

    def __init__(self, limits: SandboxLimits) -> None:
        self._limits = limits
        self._line: int | None = None
        self._format_literals: set[int] = set()  # ids of `"literal".format` attributes already checked

    def generic_visit(self, node: ast.AST) -> None:
        self._line = getattr(node, "lineno", self._line)
        if not isinstance(node, _ALLOWED_NODES):
            construct = _CONSTRUCT_NAMES.get(type(node), type(node).__name__)
            raise _Refused(self._line, f"{construct} is not allowed")
        super().generic_visit(node)

    def _refuse(self, node: ast.AST, reason: str) -> _Refused:
        return _Refused(getattr(node, "lineno", self._line), reason)

    def _check_identifier(self, node: ast.AST, name: str, what: str = "name") -> None:
        if name.startswith("_") and name != "_":
            raise self._refuse(node, f"{what} '{name}' is not allowed (names starting with '_')")
        if name in _FORBIDDEN_NAMES:
            raise self._refuse(node, f"{what} '{name}' is not allowed")

    def visit_Name(self, node: ast.Name) -> None:
        if not (node.id == "__name__" and isinstance(node.ctx, ast.Load)):  # `if __name__ == "__main__":`
            self._check_identifier(node, node.id)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)  # inner constructs first: `open(p).read()` is refused for `open`
        if not isinstance(node.ctx, ast.Load):
            verb = "deletion" if isinstance(node.ctx, ast.Del) else "assignment"
            raise self._refuse(node, f"{verb} of attribute '{node.attr}' is not allowed")
        if node.attr.startswith("_"):
            raise self._refuse(node, f"attribute '{node.attr}' is not allowed")
        if node.attr == "format" and id(node) in self._format_literals:
            pass
        elif node.attr == "format":
            raise self._refuse(node, "'.format' is allowed only on a string literal")
        elif node.attr not in _ALLOWED_ATTRIBUTES:
            raise self._refuse(node, f"attribute '{node.attr}' is not allowed")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "format"
            and isinstance(func.value, ast.Constant)
            and isinstance(func.value.value, str)
        ):
            self._check_format_literal(node, func.value.value)
            self._format_literals.add(id(func))
        self.generic_visit(node)

    def _check_format_literal(self, node: ast.AST, text: str) -> None:
        try:
            fields = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise self._refuse(node, f"format string: {exc}") from exc
        for _, field, spec, _conversion in fields:
            if field is None:
                continue
            if not _FORMAT_FIELD.fullmatch(field) or field.startswith("_"):
                raise self._refuse(node, f"format field '{{{field}}}' is not allowed (no attributes or indexing)")
            if spec and "{" in spec:
                raise self._refuse(node, "computed format specs are not allowed")
            self._check_format_spec(node, spec or "")

    def _check_format_spec(self, node: ast.AST, spec: str) -> None:
        for digits in _DIGITS.findall(spec):
            if int(digits) > self._limits.max_format_width:
                raise self._refuse(node, f"format width {digits} is over the limit of {self._limits.max_format_width}")

    def visit_FormattedValue(self, node: ast.FormattedValue) -> None:
        if node.format_spec is not None:
            spec_parts = node.format_spec.values if isinstance(node.format_spec, ast.JoinedStr) else []
            if not all(isinstance(part, ast.Constant) and isinstance(part.value, str) for part in spec_parts):
                raise self._refuse(node, "computed format specs are not allowed")
            self._check_format_spec(node, "".join(str(part.value) for part in spec_parts))  # type: ignore[attr-defined]
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bytes):
            raise self._refuse(node, "bytes literals are not allowed")
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name != "math":
                raise self._refuse(node, f"import of '{alias.name}' is not allowed (only math)")
            if alias.asname is not None:
                self._check_identifier(node, alias.asname)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module != "math" or node.level:
            module = "." * node.level + (node.module or "")
            raise self._refuse(node, f"import of '{module}' is not allowed (only math)")
        for alias in node.names:
            if alias.name == "*":
                raise self._refuse(node, "'from math import *' is not allowed")
            if alias.name not in _MATH_NAMES:
                raise self._refuse(node, f"math has no '{alias.name}'")
            self._check_identifier(node, alias.asname or alias.name)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.decorator_list:
            raise self._refuse(node, "decorators are not allowed")
        self._check_identifier(node, node.name, "function name")
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._check_identifier(node, node.arg, "parameter")
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg is not None:
            self._check_identifier(node, node.arg, "keyword")
        self.generic_visit(node)


def _too_deep(tree: ast.AST, limit: int) -> bool:
    """Whether the tree nests deeper than ``limit``; iterative, so a deep tree cannot overflow it."""
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return False


@dataclass(frozen=True)
class _Problem:
    kind: ExecutionKind
    reason: str


def _parse_and_check(source: str, limits: SandboxLimits) -> ast.Module | _Problem:
    if len(source) > limits.max_program_chars:
        return _Problem("refused", f"the program has {len(source)} characters, over the limit of "
                                   f"{limits.max_program_chars}")  # fmt: skip
    try:
        tree = ast.parse(source, filename="<program>", mode="exec")
    except SyntaxError as exc:
        if "too many nested" in str(exc.msg) or "too complex" in str(exc.msg):
            return _Problem("refused", f"line {exc.lineno}: nesting too deep ({exc.msg})")
        return _Problem("error", f"line {exc.lineno}: syntax error: {exc.msg}")
    except (RecursionError, MemoryError):
        return _Problem("refused", "nesting too deep to parse")
    except ValueError as exc:  # null bytes
        return _Problem("refused", f"unreadable program: {exc}")
    if _too_deep(tree, limits.max_ast_depth):
        return _Problem("refused", f"nesting deeper than {limits.max_ast_depth} levels")
    try:
        _ProgramChecker(limits).visit(tree)
    except _Refused as exc:
        return _Problem("refused", str(exc))
    return tree


def check_program(source: str, limits: SandboxLimits = DEFAULT_LIMITS) -> str | None:
    """Layer 1 alone: None when the program is allowed, else the reason ("line 2: import of 'os' ...").

    Syntax errors are reasons too. A program that passes may still fail at run time: the guards and
    the child process's limits are the other two layers.
    """
    checked = _parse_and_check(source, limits)
    return checked.reason if isinstance(checked, _Problem) else None


# --------------------------------------------------------------------------------------------------
# Layer 2: guards rewritten into the program


_GUARDED_OPERATORS: dict[type[ast.operator], str] = {ast.Pow: "_pow", ast.Mult: "_mul", ast.LShift: "_lshift",
                                                     ast.Mod: "_mod"}  # fmt: skip


def _call(function: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=ast.Name(id=function, ctx=ast.Load()), args=list(args), keywords=[])


class _GuardInserter(ast.NodeTransformer):
    """Routes risky operators through guards, ticks while-loops, binds math, records expression values.

    Runs only on checked trees: guard names start with '_', so the program cannot name or shadow them.
    """

    def __init__(self) -> None:
        self._function_depth = 0

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        guard = _GUARDED_OPERATORS.get(type(node.op))
        if guard is None:
            return node
        return ast.copy_location(_call(guard, node.left, node.right), node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        self.generic_visit(node)
        guard = _GUARDED_OPERATORS.get(type(node.op))
        if guard is None:
            return node
        current = copy.deepcopy(node.target)  # a Name or Subscript: attribute targets are refused
        current.ctx = ast.Load()
        return ast.copy_location(ast.Assign(targets=[node.target], value=_call(guard, current, node.value)), node)

    def visit_While(self, node: ast.While) -> ast.stmt:
        self.generic_visit(node)
        node.body.insert(0, ast.copy_location(ast.Expr(value=_call("_tick")), node))
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.stmt:
        self._function_depth += 1
        self.generic_visit(node)
        self._function_depth -= 1
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        self.generic_visit(node)
        is_docstring = isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if self._function_depth == 0 and not is_docstring:
            node.value = ast.copy_location(_call("_expr", node.value), node.value)
        return node

    def visit_Import(self, node: ast.Import) -> list[ast.stmt]:
        return [
            ast.copy_location(
                ast.Assign(targets=[ast.Name(id=alias.asname or alias.name, ctx=ast.Store())],
                           value=ast.Name(id="_math", ctx=ast.Load())),
                node,
            )
            for alias in node.names
        ]  # fmt: skip

    def visit_ImportFrom(self, node: ast.ImportFrom) -> list[ast.stmt]:
        return [
            ast.copy_location(
                ast.Assign(targets=[ast.Name(id=alias.asname or alias.name, ctx=ast.Store())],
                           value=ast.Attribute(value=ast.Name(id="_math", ctx=ast.Load()), attr=alias.name,
                                               ctx=ast.Load())),
                node,
            )
            for alias in node.names
        ]  # fmt: skip


def _prepare(source: str, limits: SandboxLimits) -> CodeType | _Problem:
    """Layers 1 and 2: the guarded program compiled, or why it will not run."""
    checked = _parse_and_check(source, limits)
    if isinstance(checked, _Problem):
        return checked
    guarded = ast.fix_missing_locations(_GuardInserter().visit(checked))
    try:
        return compile(guarded, "<program>", "exec", dont_inherit=True)
    except SyntaxError as exc:  # `return` outside a function, `break` outside a loop
        return _Problem("error", f"line {exc.lineno}: syntax error: {exc.msg}")
    except (RecursionError, MemoryError):
        return _Problem("refused", "nesting too deep to compile")


# --------------------------------------------------------------------------------------------------
# Layer 3: the child process

# The child's whole program. It reads the marshalled code on stdin, drops privileges, lowers its
# rlimits, runs the code with small builtins and writes one JSON line on stdout. It imports only
# modules that start in a few milliseconds (no json: `re` alone costs ~10 ms).
_RUNNER = r"""
import builtins, marshal, math, os, resource, signal, sys
from _json import encode_basestring_ascii as quote

(MEMORY, CPU, INT_BITS, ITEMS, RANGE, WHILE, OUTPUT, WIDTH, UID, GID) = [int(a) for a in sys.argv[1:11]]


class Limit(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


def too_big(what):
    return Limit("memory", what + " would have more than %d bits" % INT_BITS)


def guard_pow(base, exp, mod=None):
    if mod is not None:
        if isinstance(mod, int) and mod.bit_length() > INT_BITS:
            raise too_big("pow() with this modulus")
        return pow(base, exp, mod)
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if exp > INT_BITS or exp * math.log2(abs(base)) > INT_BITS:
            raise too_big("an integer power")
    return base ** exp


def guard_mul(a, b):
    if isinstance(a, int) and isinstance(b, int):
        if a.bit_length() + b.bit_length() > INT_BITS:
            raise too_big("an integer product")
    elif isinstance(b, int) and isinstance(a, (str, list, tuple)):
        if len(a) * b > ITEMS:
            raise Limit("memory", "repetition would make more than %d items" % ITEMS)
    elif isinstance(a, int) and isinstance(b, (str, list, tuple)):
        if len(b) * a > ITEMS:
            raise Limit("memory", "repetition would make more than %d items" % ITEMS)
    return a * b


def guard_lshift(a, b):
    if isinstance(a, int) and isinstance(b, int) and a and b > 0 and a.bit_length() + b > INT_BITS:
        raise too_big("a left shift")
    return a << b


def check_percent_format(text):
    i, n = 0, len(text)
    while True:
        i = text.find("%", i)
        if i < 0:
            return
        j = i + 1
        if j < n and text[j] == "(":
            close = text.find(")", j)
            if close < 0:
                return
            j = close + 1
        number = 0
        while j < n and not text[j].isalpha() and text[j] != "%":
            c = text[j]
            if c == "*":
                raise Limit("memory", "'*' widths in %-formatting are not allowed")
            if c in "0123456789":
                number = number * 10 + ord(c) - 48
                if number > WIDTH:
                    raise Limit("memory", "a %%-format width over %d" % WIDTH)
            else:
                number = 0
            j += 1
        i = j + 1


def guard_mod(a, b):
    if isinstance(a, str):
        check_percent_format(a)
    return a % b


def guard_round(number, ndigits=None):
    if ndigits is None:
        return round(number)
    if isinstance(ndigits, int) and abs(ndigits) > WIDTH:
        raise Limit("memory", "round() to more than %d digits" % WIDTH)
    return round(number, ndigits)


def guard_range(*args):
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = RANGE + 1
    if size > RANGE:
        raise Limit("timeout", "range() of more than %d numbers" % RANGE)
    return numbers


ticks = [0]


def tick():
    ticks[0] += 1
    if ticks[0] > WHILE:
        raise Limit("timeout", "while-loops ran more than %d iterations" % WHILE)


printed = []
printed_chars = [0]


def guard_print(*args, sep=" ", end="\n", file=None, flush=False):
    if file is not None:
        raise ValueError("print(file=...) is not allowed")
    sep = " " if sep is None else sep
    end = "\n" if end is None else end
    if not isinstance(sep, str) or not isinstance(end, str):
        raise TypeError("sep and end must be strings")
    text = sep.join([str(arg) for arg in args]) + end
    printed_chars[0] += len(text)
    if printed_chars[0] > OUTPUT:
        raise Limit("memory", "the program printed more than %d characters" % OUTPUT)
    printed.append(text)


last_expression = [None]


def record_expression(value):
    last_expression[0] = value
    return value


def guard_factorial(n):
    if isinstance(n, int) and n > 1 and n * n.bit_length() > INT_BITS:
        raise too_big("factorial()")
    return math.factorial(n)


def guard_comb(n, k):
    if isinstance(n, int) and isinstance(k, int) and 0 < k < n and min(k, n - k) * n.bit_length() > INT_BITS:
        raise too_big("comb()")
    return math.comb(n, k)


def guard_perm(n, k=None):
    if isinstance(n, int) and n > 1 and (k if isinstance(k, int) else n) * n.bit_length() > INT_BITS:
        raise too_big("perm()")
    return math.perm(n, k)


class MathModule:
    pass


math_module = MathModule()
for name in dir(math):
    if not name.startswith("_"):
        setattr(math_module, name, getattr(math, name))
math_module.factorial, math_module.comb, math_module.perm = guard_factorial, guard_comb, guard_perm

SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "frozenset", "int",
    "isinstance", "len", "list", "map", "max", "min", "reversed", "set", "sorted", "str", "sum", "tuple",
    "zip", "ArithmeticError", "TypeError", "ValueError", "ZeroDivisionError")}
SAFE_BUILTINS.update(pow=guard_pow, print=guard_print, range=guard_range, round=guard_round)


def lower(limit, soft, hard=None):
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(limit)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(limit, (soft, hard))


def where(exc):
    line = None
    trace = exc.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "<program>":
            line = trace.tb_lineno
        trace = trace.tb_next
    return "line %d: " % line if line else ""


def text_of(exc):
    try:
        text = str(exc)
    except BaseException:
        text = ""
    return type(exc).__name__ + (": " + text[:300] if text else "")


def describe(name, value):
    if callable(value):
        return None
    if isinstance(value, bool):
        return {"name": name, "type": "bool", "text": ""}
    if isinstance(value, int):
        try:
            return {"name": name, "type": "number", "text": repr(float(value))}
        except OverflowError:
            return {"name": name, "type": "number", "text": "inf"}
    if isinstance(value, float):
        return {"name": name, "type": "number", "text": repr(value)}
    if isinstance(value, str):
        return {"name": name, "type": "str", "text": value[:200]}
    return {"name": name, "type": type(value).__name__, "text": ""}


def emit(status, error, output, candidates):
    items = ",".join("{" + ",".join(quote(k) + ":" + quote(v) for k, v in c.items()) + "}" for c in candidates)
    sys.stdout.write('{"status":%s,"error":%s,"output":%s,"candidates":[%s]}\n'
                     % (quote(status), quote(error), quote(output), items))
    sys.stdout.flush()


def main():
    code = marshal.loads(sys.stdin.buffer.read())
    if UID >= 0 and os.geteuid() == 0:
        try:
            os.setgroups([])
            os.setgid(GID)
            os.setuid(UID)
        except OSError as exc:  # fail closed: never run the program as root by accident
            emit("error", "the sandbox cannot drop privileges to uid %d: %s" % (UID, exc), "", [])
            os._exit(0)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    lower(resource.RLIMIT_CORE, 0)
    lower(resource.RLIMIT_FSIZE, 0)
    lower(resource.RLIMIT_NOFILE, 3)
    lower(resource.RLIMIT_NPROC, 0)
    lower(resource.RLIMIT_CPU, CPU, CPU + 1)
    lower(resource.RLIMIT_AS, MEMORY)
    namespace = {
        "__builtins__": SAFE_BUILTINS, "__name__": "__main__", "math": math_module, "_math": math_module,
        "_pow": guard_pow, "_mul": guard_mul, "_lshift": guard_lshift, "_mod": guard_mod, "_tick": tick,
        "_expr": record_expression,
    }
    status, error, candidates = "ok", "", []
    try:
        exec(code, namespace)
    except Limit as exc:
        status, error = exc.kind, where(exc) + str(exc)
    except MemoryError as exc:
        status, error = "memory", where(exc) + "MemoryError: over the %d MiB memory limit" % (MEMORY >> 20)
    except BaseException as exc:
        status, error = "error", where(exc) + text_of(exc)
    else:
        for name in ("answer", "result"):
            if name in namespace:
                candidates.append(describe(name, namespace[name]))
        if last_expression[0] is not None:
            candidates.append(describe("the last expression", last_expression[0]))
    emit(status, error, "".join(printed)[:OUTPUT], [c for c in candidates if c is not None])
    os._exit(0)


main()
"""

_REPLY_STATUSES: dict[str, ExecutionKind] = {"timeout": "timeout", "memory": "memory", "error": "error"}

_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
_NUMERIC_STRING = re.compile(rf"\s*\$?\s*({_NUMBER})\s*%?\s*")
_PRINTED_NUMBER = re.compile(_NUMBER)


def _finite(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _value_from(candidates: Sequence[Mapping[str, str]], output: str) -> float | str:
    """The program's number from what the child reported, or what it had instead (for the error)."""
    seen: list[str] = []
    for candidate in candidates:
        name, kind, text = candidate.get("name", "?"), candidate.get("type", "?"), candidate.get("text", "")
        if kind == "number":
            value = _finite(text)
            if value is not None:
                return value
            seen.append(f"{name} is not finite ({text})")
        elif kind == "str":
            match = _NUMERIC_STRING.fullmatch(text)
            value = _finite(match.group(1)) if match else None
            if value is not None:
                return value
            seen.append(f"{name} is a str")
        else:
            seen.append(f"{name} is a {kind}")
    printed = _PRINTED_NUMBER.findall(output)
    if printed:
        value = _finite(printed[-1])
        if value is not None:
            return value
        seen.append(f"the last number printed is not finite ({printed[-1]})")
    elif output.strip():
        seen.append("it printed no number")
    return "the program computed no number" + (f" ({'; '.join(seen)})" if seen else "")


def _is_candidate(candidate: object) -> bool:
    return isinstance(candidate, dict) and all(isinstance(v, str) for v in candidate.values())


def _execution_from_reply(reply: object, limits: SandboxLimits) -> Execution | None:
    """The execution a child's JSON reply describes; None when the reply is not one the runner writes."""
    if not isinstance(reply, dict):
        return None
    status, error, output, candidates = (reply.get(key) for key in ("status", "error", "output", "candidates"))
    if not (isinstance(status, str) and isinstance(error, str) and isinstance(output, str)):
        return None
    if not (isinstance(candidates, list) and all(_is_candidate(c) for c in candidates)):
        return None
    output = output[: limits.max_output_chars]
    if status != "ok":
        return Execution.failure(_REPLY_STATUSES.get(status, "error"), (error or status)[:500], output)
    value = _value_from(candidates, output)
    if isinstance(value, str):
        return Execution.failure("no_value", value, output)
    return Execution.success(value, output)


def _interpret(returncode: int, stdout: bytes, stderr: bytes, limits: SandboxLimits) -> Execution:
    lines = stdout.decode("ascii", "replace").strip().splitlines()
    if lines:
        try:
            reply = json.loads(lines[-1])
        except ValueError:
            reply = None
        execution = _execution_from_reply(reply, limits)
        if execution is not None:
            return execution
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return Execution.failure("timeout", f"the program used more than {limits.cpu_seconds:g} s of CPU")
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    if "MemoryError" in tail[0]:
        return Execution.failure("memory", f"over the {limits.memory_bytes >> 20} MiB memory limit")
    logger.warning("sandbox child ended with code %s and no reply: %s", returncode, tail[0][:300])
    return Execution.failure("error", f"the sandbox process ended with code {returncode}: {tail[0][:300]}")


def _child_ids(user: str) -> tuple[int, int]:
    """The uid and gid the child drops to: only when the coordinator is root (-1: stay as we are)."""
    if os.geteuid() != 0 or not user:
        return -1, -1
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        logger.warning("sandbox user %r does not exist; the child runs as uid/gid 65534", user)
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> bytes:
    """All of a stream, keeping its first ``cap`` bytes (the rest is drained so the child never blocks)."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    # The child leads its own session, so its pid is its process group: this reaches anything it started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class SubprocessSandbox:
    """The real ``ProgramRunner``: checks, guards, then runs each program in a limited child process.

    At most ``max_concurrent`` children run at once (others wait their turn); ``run`` never raises for
    anything the program does and never blocks the event loop.
    """

    def __init__(self, limits: SandboxLimits = DEFAULT_LIMITS, max_concurrent: int = 2) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._limits = limits
        self._slots = asyncio.Semaphore(max_concurrent)
        uid, gid = _child_ids(limits.child_user)
        self._args = [
            str(number)
            for number in (
                limits.memory_bytes, max(1, math.ceil(limits.cpu_seconds)), limits.max_int_bits,
                limits.max_sequence_items, limits.max_range, limits.max_while_iterations,
                limits.max_output_chars, limits.max_format_width, uid, gid,
            )
        ]  # fmt: skip

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    async def run(self, program: str) -> Execution:
        started = time.perf_counter()
        # Checking and compiling is pure Python over the syntax tree: ~0.1 ms for a typical program,
        # 10-25 ms for a dense 4000-character one, so it runs in a worker thread like any other CPU work.
        prepared = await asyncio.to_thread(_prepare, program, self._limits)
        if isinstance(prepared, _Problem):
            execution = Execution.failure(prepared.kind, prepared.reason)
        else:
            async with self._slots:
                execution = await self._execute(prepared)
        logger.debug("sandbox: %s in %.1f ms%s", execution.kind or "ok", (time.perf_counter() - started) * 1000,
                     f" ({execution.error})" if execution.error else "")  # fmt: skip
        return execution

    async def _execute(self, code: CodeType) -> Execution:
        """Layer 3 alone: run compiled code in a child. Tests call it to show the child holds by itself."""
        payload = marshal.dumps(code)
        workdir = tempfile.mkdtemp(prefix="dellm-sandbox-")
        try:
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", "-B", "-c", _RUNNER, *self._args,
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    cwd=workdir, env={}, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                logger.error("cannot start the sandbox process: %s", exc)
                return Execution.failure("error", f"cannot start the sandbox process: {exc}")
            try:
                returncode, stdout, stderr = await asyncio.wait_for(
                    self._converse(process, payload), timeout=self._limits.wall_seconds
                )
            except TimeoutError:
                return Execution.failure("timeout", f"the program ran longer than {self._limits.wall_seconds:g} s")
            finally:
                _kill_group(process.pid)
                if process.returncode is None:
                    await process.wait()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return _interpret(returncode, stdout, stderr, self._limits)

    async def _converse(self, process: asyncio.subprocess.Process, payload: bytes) -> tuple[int, bytes, bytes]:
        if process.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                process.stdin.write(payload)
                await process.stdin.drain()
            process.stdin.close()
        cap = self._limits.max_reply_bytes
        stdout, stderr, returncode = await asyncio.gather(
            _read_capped(process.stdout, cap), _read_capped(process.stderr, cap), process.wait()
        )
        return returncode, stdout, stderr
