"""Every prompt the coordinator writes, in one place: a chunk's prompt for its nodes (the task, the
operation's instruction from the operations table, and the results it depends on), the synthesis
prompt, and the model planner's prompt. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from dellm.coordinator.pipeline.answers import exact_answer, final_number
from dellm.coordinator.pipeline.operations import OPERATIONS, Operation, operation_names
from dellm.coordinator.types import Chunk, ChunkResult

_WORD_PROBLEM = ("{task}\nSolve it step by step in a few short lines, then give the final number on the last "
                 "line as 'Answer: <number>'.")


def build_chunk_prompt(chunk: Chunk, dependencies: Sequence[ChunkResult]) -> str:
    """The prompt a node sees: earlier results it depends on, then the task."""
    template = "{task}\n" + OPERATIONS[chunk.operation].instruction
    if chunk.operation is Operation.MATH_OP and exact_answer(chunk.text) is None:
        template = _WORD_PROBLEM  # a word problem needs its steps worked out before the number
    task = template.format(task=chunk.text)
    if not dependencies:
        return task
    context = "\n".join(f"- {d.chunk.text}: {concise_answer(d)}" for d in dependencies)
    return f"Results of earlier steps:\n{context}\n\nUsing those results where relevant:\n{task}"


def concise_answer(result: ChunkResult) -> str:
    """What a dependent chunk needs of a result: a math chunk's number, else the answer itself."""
    if result.chunk.operation is Operation.MATH_OP:
        value = final_number(result.answer)
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
