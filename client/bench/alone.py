"""One node ALONE on GSM8K: the strongest fair single-node baseline, with no coordinator at all.

The node process is asked directly (``NodeService.Generate``), greedily, one sample per problem, with
one of its two natural single-sample prompts:

- ``cot``      chain of thought: "solve it step by step", the final line ``Answer: <number>``; the answer
               is the number of that line (``final_number``); the coordinator's own reasoning prompt for a
               word problem (``prompts.reasoning_prompt``), so that the network and the node alone are asked alike;
- ``program``  program-aided: the very prompt and system instruction the coordinator gives a word problem
               (``build_chunk_prompt`` on a math chunk, ``DispatchConfig.program_system_prompt``), and the
               program it writes run in the same sandbox and judged the same way
               (``judge_by_program``): a single node with an executor is still a single node;
- ``function`` the coordinator's other program prompt, a PAL-style ``solution()`` function naming each
               quantity (``prompts.function_program_prompt``), run and judged the same way.

A problem's latency is the client's wall clock from the request to the judged number (the program's run
included). Nothing here decides which prompt is better: the report picks the baseline from the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from dellm.client.bench.data import Problem
from dellm.client.bench.scoring import QuestionRecord, is_correct
from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.pipeline.answers import final_number, format_number
from dellm.coordinator.pipeline.execute import judge_by_program
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import (
    REASONING_SYSTEM,
    build_chunk_prompt,
    function_program_prompt,
    reasoning_prompt,
)
from dellm.coordinator.sandbox import ProgramRunner
from dellm.coordinator.types import Chunk, NodeAnswer
from dellm.protos import dellm_pb2, dellm_pb2_grpc

PROMPT_KINDS = ("cot", "program", "function")



@dataclass(frozen=True)
class AlonePrompt:
    kind: str  # one of PROMPT_KINDS
    system: str
    text: str
    chunk: Chunk | None  # the math chunk a program answer is judged as (the program prompts only)


def alone_prompt(kind: str, question: str) -> AlonePrompt:
    """The prompt one node alone is asked ``question`` with (see the module docstring)."""
    if kind == "cot":
        return AlonePrompt(kind, REASONING_SYSTEM, reasoning_prompt(question), None)
    if kind in ("program", "function"):
        chunk = Chunk("alone", Operation.MATH_OP, question, token_count=len(question.split()), complexity=1.0)
        text = build_chunk_prompt(chunk, []) if kind == "program" else function_program_prompt(question)
        return AlonePrompt(kind, DispatchConfig().program_system_prompt, text, chunk)
    raise ValueError(f"unknown prompt {kind!r}; expected one of {PROMPT_KINDS}")


async def generate(stub: dellm_pb2_grpc.NodeServiceStub, prompt: AlonePrompt, max_tokens: int,
                   timeout_s: float) -> tuple[str, dellm_pb2.TokenChunk | None]:
    """The node's whole greedy answer and its last stream message."""
    request = dellm_pb2.GenerateRequest(prompt=prompt.text, max_tokens=max_tokens, temperature=0.0,
                                        system=prompt.system, operation=dellm_pb2.MATH_OP)
    parts: list[str] = []
    last: dellm_pb2.TokenChunk | None = None
    async for piece in stub.Generate(request, timeout=timeout_s):
        parts.append(piece.text)
        last = piece
    return "".join(parts), last


async def warm_up(address: str, timeout_s: float = 300.0) -> float:
    """One short untimed generation, so that no measured problem pays for loading the model's pages;
    returns its seconds."""
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as channel:
        request = dellm_pb2.GenerateRequest(prompt="Say OK.", max_tokens=4, temperature=0.0)
        async for _ in dellm_pb2_grpc.NodeServiceStub(channel).Generate(request, timeout=timeout_s):
            pass
    return time.perf_counter() - started


async def ask_alone(stub: dellm_pb2_grpc.NodeServiceStub, problem: Problem, phase: str, kind: str, node: str,
                    runner: ProgramRunner, max_tokens: int, timeout_s: float) -> QuestionRecord:
    """Ask one problem of the node alone; an error becomes the record's ``error``, never an exception."""
    record = QuestionRecord(phase, problem.index, problem.question, problem.label)
    prompt = alone_prompt(kind, problem.question)
    started = time.perf_counter()
    try:
        text, last = await generate(stub, prompt, max_tokens, timeout_s)
    except grpc.aio.AioRpcError as exc:
        record.latency_s = time.perf_counter() - started
        record.error = f"{exc.code().name}: {exc.details()}"
        return record
    generated_s = time.perf_counter() - started
    program_note = ""
    if prompt.chunk is not None:
        judged = await judge_by_program(NodeAnswer("alone", node, text, 0.0, generated_s * 1000), prompt.chunk,
                                        runner)
        value, program_note = judged.value, judged.program
    else:
        value = final_number(text)
    record.latency_s = time.perf_counter() - started
    record.answer = text
    record.predicted = value
    record.correct = is_correct(value, problem.value)
    vote: dict[str, Any] = {
        "node": node, "answer": text, "normalized": format_number(value) if value is not None else "",
        "number": value, "correct": record.correct, "failed": False, "error": "", "program": program_note,
        "tokens": last.completion_tokens if last is not None else 0,
        "finish_reason": last.finish_reason if last is not None else "",
        "generate_s": round(generated_s, 3),
    }
    record.chunks = [{"chunk_id": "alone", "answer": text, "winner": node, "unanimous": True, "votes": [vote]}]
    return record


async def ask_all_alone(address: str, problems: Sequence[Problem], phase: str, kind: str, node: str,
                        runner: ProgramRunner, *, max_tokens: int, timeout_s: float,
                        progress: Callable[[str], None], sink: list[QuestionRecord]) -> None:
    """Ask ``problems`` one after the other of the node at ``address``, appending each record to ``sink``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dellm_pb2_grpc.NodeServiceStub(channel)
        for number, problem in enumerate(problems, start=1):
            record = await ask_alone(stub, problem, phase, kind, node, runner, max_tokens, timeout_s)
            sink.append(record)
            mark = "ERROR " + record.error if record.error else ("right" if record.correct else "wrong")
            done = [r for r in sink if r.phase == phase]
            got = "-" if record.predicted is None else format_number(record.predicted)
            progress(f"  [{phase} {number}/{len(problems)}] #{problem.index}: label {problem.label}, got {got} "
                     f"({mark}) in {record.latency_s:.1f}s; {sum(r.correct for r in done)}/{len(done)} right so far")
