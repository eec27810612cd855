"""Every prompt the coordinator writes, in one place: a chunk's prompt and system prompt for its nodes (the
task and the results it depends on; the operation's instruction from the operations table, in the system
prompt, which a node keeps evaluated between requests), the synthesis prompt, and the model planner's
prompt. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.answers import exact_answer, final_number, with_prior_value
from dellm.coordinator.pipeline.operations import OPERATIONS, Operation, operation_names
from dellm.coordinator.types import Chunk, ChunkResult

# Math chunks ask for a program: the coordinator runs it in its sandbox and votes over what it computes.
_PROGRAM = ("{task}\nReply with only a ```python code block that computes it and stores the final number in a "
            "variable named answer, then one last line 'Answer: <number>'. No explanations.")
# Arithmetic the coordinator can check exactly needs no working: one line of code is the whole answer. Its
# instruction and examples are the system prompt (DispatchConfig.expression_system_prompt), which a node keeps
# evaluated between requests, so the node reads only the task itself.
_WORD_PROBLEM = ("{task}\nReply with only a ```python code block that solves it: one variable per quantity in the "
                 "problem, each step on its own line, the final number stored in a variable named answer. Then one "
                 "last line 'Answer: <number>'. No explanations.")
# A word problem's other method: reasoning in words (chain of thought), judged by its final line. Two methods
# fail differently, so their agreement is better evidence than two answers of one method (pipeline/consistency.py).
_REASONING = ("{task}\nSolve it step by step, one short line per step. Then give the final number on the last line "
              "as 'Answer: <number>'.")
REASONING_SYSTEM = "You are a careful assistant who solves math word problems."
# Two more greedy methods for word problems, each failing differently from its sibling above: plan and solve
# (the quantities and the question first, then the steps) and a PAL-style function whose value the sandbox
# reads from ``answer``.
_PLANNED_REASONING = ("{task}\nFirst list the quantities the problem gives and what it asks, one short line each. "
                      "Then solve it step by step in words, without code, one short line per step. Give the final "
                      "number on the last line as 'Answer: <number>'.")
_FUNCTION_PROGRAM = ("{task}\nReply with only a ```python code block: a function def solution(): that names each "
                     "quantity in the problem in a variable with a short # comment, computes step by step and returns "
                     "the final number. End the block with the line answer = solution(). No explanations.")


def reasoning_prompt(text: str) -> str:
    """A word problem asked for worked steps in words and a final 'Answer: <number>' line."""
    return _REASONING.format(task=text)


def planned_reasoning_prompt(text: str) -> str:
    """A word problem asked to list its quantities and question, then for worked steps and 'Answer: <number>'."""
    return _PLANNED_REASONING.format(task=text)


def function_program_prompt(text: str) -> str:
    """A word problem asked for a ``solution()`` function, one commented variable per quantity, and the line
    ``answer = solution()`` (the variable the sandbox reads)."""
    return _FUNCTION_PROGRAM.format(task=text)


def build_chunk_prompt(chunk: Chunk, dependencies: Sequence[ChunkResult], *, programs: bool = True,
                       checkable: bool | None = None) -> str:
    """The prompt a node sees: earlier results it depends on, then the task and its operation's instruction.

    With ``programs`` (the coordinator can run them), a math chunk asks for a program: one line when its
    arithmetic can be ``checkable`` exactly (read from the text when not given), worked steps for a
    word problem. Checkable arithmetic is the task alone, its instruction being in its system prompt
    (``system_prompt_for``), and a dependent step has the earlier result written in ("subtract that from
    1200" after 180: "subtract 180 from 1200"): every prompt token costs a 0.5B node on one thread about
    12 ms, and the small models slip less on a plain computation than on a reference to read."""
    if chunk.operation is Operation.MATH_OP and programs:
        prior = dependencies[-1].value if dependencies else None  # what the step's arithmetic works on
        if checkable is None:
            checkable = exact_answer(chunk.text, prior) is not None
        if checkable:
            return chunk.text if prior is None else with_prior_value(chunk.text, prior)
        template = _WORD_PROBLEM if not dependencies else _PROGRAM
    else:
        template = "{task}"  # the operation's instruction is in its system prompt (system_prompt_for)
    task = template.format(task=chunk.text)
    if not dependencies:
        return task
    context = "\n".join(f"- {d.chunk.text}: {concise_answer(d)}" for d in dependencies)
    return f"Results of earlier steps:\n{context}\n\nUsing those results where relevant:\n{task}"


def system_prompt_for(chunk: Chunk, config: DispatchConfig, *, programs: bool = True, checkable: bool = False) -> str:
    """The system instruction a chunk's nodes get: (math, with programs) code, one line for ``checkable``
    arithmetic and a program otherwise; else plain text, with the operation's instruction ("Answer concisely
    with a short list ...") in it rather than after every task, since a node keeps its system prompts
    evaluated and pays for the user's words alone (~35 ms a token for the 1.5B on one thread)."""
    if chunk.operation is Operation.MATH_OP and programs:
        return config.expression_system_prompt if checkable else config.program_system_prompt
    return operation_system_prompt(chunk.operation, config)


def operation_system_prompt(operation: Operation, config: DispatchConfig) -> str:
    """The plain system prompt with ``operation``'s instruction."""
    return f"{config.system_prompt} {OPERATIONS[operation].instruction}"


def max_tokens_for(chunk: Chunk, config: DispatchConfig, *, programs: bool = True, checkable: bool = False) -> int:
    """The chunk's token budget: one line of code for checkable arithmetic, a program and its answer line
    for the rest of math, and the plain budget otherwise, capped by what its operation needs."""
    if chunk.operation is Operation.MATH_OP and programs:
        return config.expression_max_tokens if checkable else max(config.max_tokens, config.program_max_tokens)
    cap = OPERATIONS[chunk.operation].max_tokens
    return config.max_tokens if cap is None else min(config.max_tokens, cap)


def concise_answer(result: ChunkResult) -> str:
    """What a dependent chunk needs of a result: a math chunk's number, else the answer itself."""
    if result.chunk.operation is Operation.MATH_OP:
        value = result.value if result.value is not None else final_number(result.answer)
        if value is not None:
            return f"{value:.12g}"
    return " ".join(result.answer.split())



SYSTEM_PROMPT = (
    "You write the final answer for the user from the results of several steps. Mention the result of every "
    "step, keep numbers exactly as given, and write two to four plain sentences without code."
)

def synthesis_prompt(query: str, results: Sequence[ChunkResult]) -> str:
    steps = "\n".join(f"- {r.chunk.text}: {concise_answer(r)}" for r in results)
    return (f"The user asked: {query}\n\nResults of each step:\n{steps}\n\n"
            "Write the answer to the user, covering every step.")


PLANNER_SYSTEM = (
    "You split a user's request into the smallest list of steps. Reply with JSON only: a list of objects "
    f'{{"text": step text copied from the request, "op": one of {operation_names()}, '
    '"after": list of earlier step numbers (1-based) whose results this step needs}.'
)
