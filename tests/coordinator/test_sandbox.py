"""The sandbox for model-written programs: hostile programs fail safely, benign ones give their number.

Every program runs in a real child process; nothing here is mocked except the ``ScriptedRunner`` test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from dellm.coordinator.sandbox import (
    Execution,
    ProgramRunner,
    SandboxLimits,
    ScriptedRunner,
    SubprocessSandbox,
    _interpret,  # the parent's reading of the child's reply
    check_program,
    extract_program,
)

# A lower CPU limit than the default keeps the CPU-bound cases quick; everything else is the default.
FAST_LIMITS = SandboxLimits(cpu_seconds=1.0, wall_seconds=2.0)

R, T, M, E, N = "refused", "timeout", "memory", "error", "no_value"

# (id, program, the kinds it may fail with). Several kinds where the machine decides which bound
# trips first (memory or CPU).
HOSTILE: list[tuple[str, str, tuple[str, ...]]] = [
    # imports
    ("import os", "import os", (R,)),
    ("__import__", "__import__('os')", (R,)),
    ("from os import", "from os import system", (R,)),
    ("import math, os", "import math, os", (R,)),
    ("from math import *", "from math import *", (R,)),
    ("import math as dunder", "import math as __m", (R,)),
    # attribute escapes
    ("subclasses", "().__class__.__bases__[0].__subclasses__()", (R,)),
    ("lambda globals", "(lambda: 0).__globals__", (R,)),
    ("function code", "def f():\n    return 1\nf.__code__", (R,)),
    ("getattr", "getattr(1, '__class__')", (R,)),
    ("generator frame", "(x for x in [1]).gi_frame", (R,)),
    ("format attribute", "'{0.__class__}'.format(1)", (R,)),
    ("format index", "'{0[0]}'.format([1])", (R,)),
    ("format on a variable", "s = '{}'\ns.format(1)", (R,)),
    ("format_map", "'{x}'.format_map({'x': 1})", (R,)),
    ("attribute assignment", "import math\nmath.pi = 3", (R,)),
    ("attribute deletion", "import math\ndel math.pi", (R,)),
    ("match class pattern", "match 1:\n    case int(real=r):\n        pass", (R,)),
    # I/O and introspection
    ("open read", "open('/etc/passwd').read()", (R,)),
    ("print(open)", "print(open)", (R,)),
    ("exec", "exec('1')", (R,)),
    ("eval", "eval('1')", (R,)),
    ("compile", "compile('1', '<x>', 'exec')", (R,)),
    ("globals", "globals()", (R,)),
    ("vars", "vars()", (R,)),
    ("type", "type(1)", (R,)),
    ("breakpoint", "breakpoint()", (R,)),
    ("input", "input()", (R,)),
    ("help", "help()", (R,)),
    ("bytes literal", "b'abc'", (R,)),
    # statements outside the language subset
    ("class", "class A:\n    pass", (R,)),
    ("try", "try:\n    x = 1\nexcept Exception:\n    x = 2", (R,)),
    ("with open", "with open('x') as f:\n    pass", (R,)),
    ("global", "x = 1\ndef f():\n    global x\n    x = 2", (R,)),
    ("nonlocal", "def f():\n    x = 1\n    def g():\n        nonlocal x\n    return x", (R,)),
    ("yield in lambda", "lambda: (yield)", (R,)),
    ("async def", "async def f():\n    pass", (R,)),
    ("decorator", "@print\ndef f():\n    pass", (R,)),
    # parser bombs and size
    ("nested parentheses", "(" * 1000 + "1" + ")" * 1000, (R,)),
    ("nested unary minus", "-" * 3900 + "1", (R,)),
    ("deep binary chain", "x = " + "+".join(["1"] * 1500), (R,)),
    ("program over the size limit", "x = 1\n" * 1000, (R,)),
    ("f-string width", "f'{1:>1000000000}'", (R,)),
    ("computed f-string width", "w = 10**9\nf'{1:>{w}}'", (R,)),
    # loops without bound
    ("while True", "while True:\n    pass", (T,)),
    ("while counting up", "x = 0\nwhile x >= 0:\n    x += 1", (T,)),
    ("while allocating", "while 1:\n    x = [1] * 1000", (T,)),
    ("while with continue", "while True:\n    continue", (T,)),
    ("nested for burning CPU", "n = 0\nfor i in range(10**7):\n    for j in range(10**7):\n        n += 1", (T,)),
    ("recursion bomb", "def f():\n    return f()\nf()", (E,)),
    # huge numbers and allocations
    ("tower power", "10**10**10", (M,)),
    ("big power", "2**100000000", (M,)),
    ("pow builtin", "pow(10, 10**9)", (M,)),
    ("augmented power", "x = 10\nx **= 10**9", (M,)),
    ("repeated squaring", "x = 3\nfor i in range(40):\n    x = x * x", (M,)),
    ("left shift", "1 << 10**9", (M,)),
    ("list repetition", "[0] * 10**10", (M,)),
    ("string repetition", "'a' * 10**10", (M,)),
    ("augmented repetition", "s = 'ab'\ns *= 10**9", (M,)),
    ("percent star width", "'%*d' % (10**9, 1)", (M,)),
    ("percent wide", "'%0999999999d' % 1", (M,)),
    ("round to huge digits", "round(5, -10**9)", (M,)),
    ("factorial", "import math\nmath.factorial(10**6)", (M,)),
    ("comb", "from math import comb\ncomb(10**7, 5 * 10**6)", (M,)),
    ("list of a huge range", "list(range(10**10))", (T, M)),
    ("comprehension over a huge range", "[i for i in range(10**9)]", (T, M)),
    ("append loop", "x = []\nfor i in range(10**8):\n    x.append(i)", (T, M)),
    ("sum of a huge range", "sum(range(10**12))", (T,)),
    ("list doubling", "x = [1]\nfor i in range(100):\n    x = x + x", (M, T)),
    ("list extend itself", "x = [1]\nfor i in range(100):\n    x.extend(x)", (M, T)),
    ("nested big lists", "x = [[0] * 1000000 for i in range(1000)]", (M, T)),
    ("string replace growth", "x = 'a' * 1000000\ny = x.replace('a', x)", (M, T)),
    ("print 10 MB", "for i in range(10**6):\n    print('x' * 10)", (M,)),
    ("print to a file", "print('x', file=1)", (E,)),
    # runs, but no usable number
    ("division by zero", "1/0", (E,)),
    ("result is a string", "result = 'hello'", (N,)),
    ("result is infinite", "result = float('inf')", (N,)),
    ("nan", "float('nan')", (N,)),
    ("huge int result", "result = 10**400", (N,)),
    ("bool result", "result = True", (N,)),
    ("nothing computed", "x = 5", (N,)),
    ("printed no number", "print('hello')", (N,)),
]

BENIGN: list[tuple[str, str, float]] = [
    ("percent of", "result = 15 / 100 * 240", 36.0),
    ("sqrt via math", "import math\nprint(math.sqrt(144))", 12.0),
    ("discount", "price = 80\ndiscount = 0.25\nprint(price * (1 - discount))", 60.0),
    (
        "compound interest",
        "principal = 1000\nrate = 0.05\nyears = 3\namount = principal * (1 + rate) ** years\nprint(round(amount, 2))",
        1157.63,
    ),
    ("loop over range", "total = 0\nfor i in range(1, 101):\n    total += i\nprint(total)", 5050.0),
    ("list sum", "scores = [88, 92, 79, 93]\nprint(sum(scores))", 352.0),
    (
        "average with f-string",
        'nums = [4, 8, 15, 16, 23, 42]\naverage = sum(nums) / len(nums)\nprint(f"The average is {average:.2f}")',
        18.0,
    ),
    (
        "function with return",
        "import math\n\ndef area(r):\n    return math.pi * r ** 2\n\nanswer = round(area(3), 2)\nprint(answer)",
        28.27,
    ),
    ("integer division", "print(17 // 5)", 3.0),
    ("last expression", "x = 7\ny = 6\nx * y", 42.0),
    ("from math import", "from math import sqrt\nhyp = sqrt(3**2 + 4**2)\nprint(hyp)", 5.0),
    (
        "while doubling",
        "balance = 1000\nyears = 0\nwhile balance < 2000:\n    balance *= 1.07\n    years += 1\nprint(years)",
        11.0,
    ),
    ("str concatenation", 'print("Total: $" + str(12 * 3))', 36.0),
    ("format literal", 'print("The answer is {}".format(2 + 2))', 4.0),
    ("percent formatting", 'print("%.2f%%" % (45 / 60 * 100))', 75.0),
    ("main guard", 'if __name__ == "__main__":\n    print(6 * 7)', 42.0),
    ("factorial", "import math\nresult = math.factorial(10)", 3628800.0),
    ("numeric string result", 'result = "1,234.5"', 1234.5),
    ("squares comprehension", "squares = [i**2 for i in range(1, 11)]\nresult = sum(squares)", 385.0),
    ("underscore loop", "for _ in range(3):\n    pass\nprint(2**10)", 1024.0),
    (
        "sales tax",
        'subtotal = 45.50\ntax = subtotal * 0.08\ntotal = subtotal + tax\nprint(f"Total: ${total:,.2f}")',
        49.14,
    ),
    ("lambda and map", "print(sum(map(lambda x: x * 2, [1, 2, 3])))", 12.0),
    ("divmod", "q, r = divmod(100, 7)\nprint(q)", 14.0),
    ("annotated", "x: float = 2.5\nanswer = x * 4", 10.0),
    ("answer before result", "result = 20\nanswer = result / 4\nprint(answer)", 5.0),
    ("answer is a sentence", "x = 6 * 7\nanswer = f'The answer is {x}'\nprint(answer)", 42.0),
    ("docstring and math alias", '"""Compute."""\nimport math as m\nm.floor(7.9)', 7.0),
    ("small int power", "print(2**64)", float(2**64)),
]


@pytest.fixture
def coordinator_unaffected() -> Iterator[None]:
    """Fails the test if running a program changed this (the coordinator's) process or left a child."""
    limits_before = {
        name: resource.getrlimit(getattr(resource, name))
        for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NOFILE", "RLIMIT_FSIZE")
    }
    cwd_before, uid_before = os.getcwd(), os.geteuid()
    children_before = {child.pid for child in _children()}  # other fixtures' servers may be running
    yield
    assert {name: resource.getrlimit(getattr(resource, name)) for name in limits_before} == limits_before
    assert (os.getcwd(), os.geteuid()) == (cwd_before, uid_before)
    assert {child.pid for child in _children()} <= children_before


def _children() -> list[psutil.Process]:
    """This process's descendants, zombies included: a reaped, killed child leaves none."""
    return psutil.Process().children(recursive=True)


def _in_groups(groups: set[int]) -> list[int]:
    """Processes still in these process groups: orphans of a sandbox child would be (init adopts them)."""
    found = []
    for pid in psutil.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) in groups:
                found.append(pid)
    return found


async def _run_watching_groups(sandbox: SubprocessSandbox, program: str) -> tuple[Execution, set[int]]:
    """Runs a program and records the process groups of the sandbox children seen meanwhile."""
    groups: set[int] = set()
    before = {child.pid for child in _children()}
    task = asyncio.create_task(sandbox.run(program))
    while not task.done():
        for child in _children():
            if child.pid in before:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                groups.add(os.getpgid(child.pid))
        await asyncio.sleep(0.02)
    return await task, groups


def test_the_tables_are_as_big_as_promised() -> None:
    assert len(HOSTILE) >= 35
    assert len(BENIGN) >= 12
    assert len({case[0] for case in HOSTILE}) == len(HOSTILE)


@pytest.mark.parametrize(("program", "kinds"), [case[1:] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
async def test_hostile_programs_fail_safely(program: str, kinds: tuple[str, ...], coordinator_unaffected: None) -> None:
    started = time.monotonic()
    execution = await SubprocessSandbox(FAST_LIMITS).run(program)
    assert not execution.ok
    assert execution.value is None
    assert execution.kind in kinds, execution
    assert execution.error.startswith(f"{execution.kind}: ")
    assert time.monotonic() - started < FAST_LIMITS.wall_seconds + 1.0
    if execution.kind == "refused":
        assert check_program(program) is not None


@pytest.mark.parametrize(("program", "expected"), [case[1:] for case in BENIGN], ids=[case[0] for case in BENIGN])
async def test_benign_programs_give_their_number(program: str, expected: float) -> None:
    assert check_program(program) is None
    execution = await SubprocessSandbox().run(program)
    assert (execution.ok, execution.kind, execution.error) == (True, "", ""), execution
    assert execution.value == pytest.approx(expected)


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("x = 1\nimport os", "line 2: import of 'os' is not allowed (only math)"),
        ("print(open)", "line 1: name 'open' is not allowed"),
        ("x = 2\nopen('/etc/passwd').read()", "line 2: name 'open' is not allowed"),
        ("().__class__", "line 1: attribute '__class__' is not allowed"),
        ("x = 1\n\ntry:\n    pass\nfinally:\n    pass", "line 3: try is not allowed"),
        ("'{0.real}'.format(1)", "line 1: format field '{0.real}' is not allowed (no attributes or indexing)"),
        ("x = (", "line 1: syntax error: '(' was never closed"),
    ],
)
def test_check_program_names_the_construct_and_line(program: str, reason: str) -> None:
    assert check_program(program) == reason


def test_check_program_allows_the_language_models_write() -> None:
    program = (
        "import math\nfrom math import floor, pi as PI\n\n"
        "def mean(values: list[float]) -> float:\n    return sum(values) / len(values)\n\n"
        "data = {'a': 1, 'b': 2}\npairs = sorted(data.items(), key=lambda kv: -kv[1])\n"
        "total = 0\nfor key, value in pairs:\n    if value > 1 and key != 'z':\n        total += value\n"
        "    elif value == 1:\n        continue\n    else:\n        break\n"
        "n = 3\nwhile n > 0:\n    n -= 1\nassert total >= 0\n"
        "evens = {i for i in range(10) if i % 2 == 0}\nsquares = {i: i * i for i in evens}\n"
        "big = max(squares.values())\nlabel = f'{big:>6,.1f}' + 'x'.upper()\n"
        "answer = (y := floor(PI * mean([1.0, 2.0]))) if y_ok else 0\n"
    ).replace("if y_ok", "if True")
    assert check_program(program) is None


async def test_a_timeout_kills_the_child_and_leaves_no_process(coordinator_unaffected: None) -> None:
    sandbox = SubprocessSandbox(SandboxLimits(cpu_seconds=10.0, wall_seconds=0.5))
    started = time.monotonic()
    program = "n = 0\nfor i in range(10**7):\n    for j in range(10**7):\n        n += 1"
    execution, groups = await _run_watching_groups(sandbox, program)
    assert execution.kind == "timeout"
    assert "0.5 s" in execution.error  # the wall clock, not the CPU limit, ended it
    assert time.monotonic() - started < 1.5
    assert groups, "the child should have been seen running"
    assert os.getpgid(0) not in groups  # the child had its own process group ...
    assert _in_groups(groups) == []  # ... and nothing in it survived


async def test_cancelling_a_run_kills_the_child(coordinator_unaffected: None) -> None:
    sandbox = SubprocessSandbox(SandboxLimits(cpu_seconds=10.0, wall_seconds=10.0))
    before = {child.pid for child in _children()}
    task = asyncio.create_task(sandbox.run("n = 0\nfor i in range(10**7):\n    for j in range(10**7):\n        n += 1"))
    await asyncio.sleep(0.3)
    assert {child.pid for child in _children()} - before, "the child should be running by now"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("max_concurrent", [2, 10])
async def test_ten_programs_run_concurrently(max_concurrent: int, coordinator_unaffected: None) -> None:
    sandbox = SubprocessSandbox(max_concurrent=max_concurrent)
    programs = [f"total = 0\nfor i in range({n} * 1000):\n    total += i % 7\nresult = total + {n}" for n in range(10)]
    expected = [sum(i % 7 for i in range(n * 1000)) + n for n in range(10)]
    executions = await asyncio.gather(*(sandbox.run(program) for program in programs))
    assert [execution.value for execution in executions] == expected
    assert all(execution.ok for execution in executions)


async def test_a_running_program_does_not_block_the_event_loop() -> None:
    sandbox = SubprocessSandbox(SandboxLimits(cpu_seconds=1.0, wall_seconds=2.0))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    execution = await sandbox.run("n = 0\nfor i in range(10**7):\n    for j in range(10**7):\n        n += 1")
    ticking.cancel()
    assert execution.kind == "timeout"
    assert len(gaps) > 20
    assert max(gaps) < 0.5  # a blocked loop would show a gap of the whole second


# Layer 3 on its own: code that got past layers 1 and 2 (compiled here without them) still cannot
# import, open files, fork, raise its limits or (when the coordinator is root) act as root.
_OS = (
    "os = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0]"
    ".__init__.__globals__\n"
)


@pytest.mark.parametrize(
    ("program", "kind", "value"),
    [
        ("import os", "error", None),
        ("open('/etc/passwd').read()", "error", None),
        ("__build_class__", "error", None),
        (_OS + "result = os['open']('/etc/hostname', 0)", "error", None),  # RLIMIT_NOFILE 3
        (_OS + "result = len(os['listdir']('.'))", "error", None),
        (_OS + "result = os['fork']()", "error", None),  # RLIMIT_NPROC 0 (as nobody when root)
        (_OS + "r = os['sys'].modules['resource']\nresult = r.setrlimit(r.RLIMIT_AS, (-1, -1))", "error", None),
        (_OS + "r = os['sys'].modules['resource']\nresult = r.getrlimit(r.RLIMIT_AS)[0]", "", 256 * 2**20),
        (_OS + "r = os['sys'].modules['resource']\nresult = r.getrlimit(r.RLIMIT_FSIZE)[0]", "", 0),
    ],
)
async def test_the_child_process_holds_without_the_other_layers(
    program: str, kind: str, value: float | None, coordinator_unaffected: None
) -> None:
    execution = await SubprocessSandbox()._execute(compile(program, "<program>", "exec", dont_inherit=True))
    assert (execution.kind, execution.value) == (kind, value), execution


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs a root coordinator")
async def test_a_root_coordinator_runs_programs_as_nobody() -> None:
    sandbox = SubprocessSandbox()
    whoami = await sandbox._execute(compile(_OS + "result = os['geteuid']()", "<program>", "exec", dont_inherit=True))
    assert whoami.value == 65534
    system = await sandbox._execute(compile(_OS + "result = os['system']('true')", "<program>", "exec",
                                            dont_inherit=True))  # fmt: skip
    assert system.kind == "error" or system.value != 0  # no process could be started


@pytest.mark.parametrize(
    "reply",
    [
        b"",
        b"not json\n",
        b'{"status": "ok", "error": "", "output": "", "candidates": [{"name": "x", "type": "number", "text": 1}]}\n',
        b'{"status": "ok", "error": "", "output": 5, "candidates": []}\n',
        b"[1, 2]\n",
    ],
)
def test_a_garbled_child_reply_is_an_error_not_a_crash(reply: bytes) -> None:
    execution = _interpret(1, reply, b"Traceback ...\nSomeError: boom\n", SandboxLimits())
    assert (execution.ok, execution.kind) == (False, "error")


def test_a_reply_that_ran_out_of_cpu_is_a_timeout() -> None:
    assert _interpret(-signal.SIGXCPU, b"", b"", SandboxLimits()).kind == "timeout"


@pytest.mark.parametrize(
    ("answer", "program"),
    [
        (
            "To find 15% of 240, multiply:\n\n```python\nresult = 15 / 100 * 240\nprint(result)\n```\n\nSo it is 36.",
            "result = 15 / 100 * 240\nprint(result)",
        ),
        (
            "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\nprint(x)\n```\nDone.",
            "x = 2\nprint(x)",
        ),
        ("```\nprint(6 * 7)\n```", "print(6 * 7)"),
        ("```py\nprint(1)\n```\nOutput:\n```\n1\n```", "print(1)"),  # the program, not its output
        ("```Python3\n    x = 3\n    print(x)\n```", "x = 3\nprint(x)"),
        ("The answer is 36.", None),
        ('```json\n{"a": 1}\n```', None),
        ("```python\nresult = 15 / 100", None),  # cut off: not a program
        ("```python\n\n```", None),
    ],
)
def test_extract_program(answer: str, program: str | None) -> None:
    assert extract_program(answer) == program


async def test_scripted_runner_is_a_program_runner() -> None:
    runner: ProgramRunner = ScriptedRunner({"x = 1": Execution.success(1.0)})
    assert await runner.run("x = 1") == Execution.success(1.0)
    assert (await runner.run("other")).kind == "error"
    assert isinstance(runner, ScriptedRunner) and runner.programs == ["x = 1", "other"]


def test_execution_failures_carry_their_kind() -> None:
    failure = Execution.failure("timeout", "too slow")
    assert (failure.ok, failure.value, failure.kind, failure.error) == (False, None, "timeout", "timeout: too slow")
