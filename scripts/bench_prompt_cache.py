#!/usr/bin/env python3
"""Benchmark: time to first token with and without the node's prompt cache.

Two node processes of one model (qwen2.5-coder-0.5b-instruct, 2 threads each) run side by side, one
with the prompt cache (the default) and one with ``--no-prompt-cache`` (the context is reset before
every request, so the whole prompt is evaluated). Both get the same sequence of chunk prompts, the
ones a coordinator writes for a mix of queries: arithmetic chunks with the program system prompt,
the others with the plain one, so the two system prompts alternate as they do at a real node. Each
prompt goes to one node, then the other (which goes first alternates), one request at a time, so the
two nodes never compete for the cores and a change of machine load falls on both. Time to first
token (TTFT) is measured at the client: from sending the Generate request to its first text.
Dependent chunks are asked without their dependencies' results. Results: bench-results/prompt_cache.json.

    python scripts/bench_prompt_cache.py --requests 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.coordinator.config import DispatchConfig  # noqa: E402
from dellm.coordinator.pipeline.decompose import decompose  # noqa: E402
from dellm.coordinator.pipeline.prompts import build_chunk_prompt, max_tokens_for, system_prompt_for  # noqa: E402
from dellm.protos import dellm_pb2, dellm_pb2_grpc  # noqa: E402
from scripts.bench_report import BenchmarkError, run_and_report  # noqa: E402

MODEL = "qwen2.5-coder-0.5b-instruct"
MODES = ("cache_on", "cache_off")
# Compound queries whose chunks mix arithmetic (program system prompt) with facts, comparisons and writing.
QUERIES = (
    "Calculate 15% of 240 then name the capital of Japan",
    "What is 156 divided by 13 and what is the chemical symbol for gold?",
    "Summarize the causes of World War I and compute 18% of 350",
    "Compare Python and Rust for systems programming, then calculate 12 times 37",
    "Who wrote Pride and Prejudice and what is 7 times 8?",
    "Calculate 10% interest on $1000 then find the best savings accounts",
    "What is 123 plus 456 and what is the largest planet in the solar system?",
    "Explain photosynthesis briefly and compute 25% of 640",
    "Write a haiku about autumn and what is 81 divided by 9?",
    "Compare tea and coffee for health, then calculate 3 to the power of 5",
)
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ChunkPrompt:
    prompt: str
    system: str
    max_tokens: int


@dataclass(frozen=True)
class Timing:
    ttft_s: float
    total_s: float


def chunk_prompts(count: int, max_tokens: int) -> list[ChunkPrompt]:
    """``count`` chunk prompts in the order a coordinator would send them, the queries repeated as needed."""
    config = DispatchConfig()
    chunks = [chunk for query in QUERIES for chunk in decompose(query).chunks]
    return [ChunkPrompt(build_chunk_prompt(chunk, []), system_prompt_for(chunk, config),
                        min(max_tokens, max_tokens_for(chunk, config)))
            for chunk in (chunks[i % len(chunks)] for i in range(count))]


@contextlib.contextmanager
def node_process(name: str, model: str, threads: int, prompt_cache: bool, workdir: Path) -> Iterator[str]:
    """A ``dellm-node`` process serving ``model`` on its own (no coordinator); yields its address."""
    log_path = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "dellm.node.cli", "--model", model, "--name", name, "--threads", str(threads),
            "--listen", "127.0.0.1:0", "--state-dir", str(workdir / "state"), "--no-advertise",
            "--prompt-cache" if prompt_cache else "--no-prompt-cache"]
    with log_path.open("w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield _wait_for_address(process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_address(process: subprocess.Popen[str], log_path: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("dellm-node ") and " on " in line:
                return line.rsplit(" on ", 1)[1].strip()
        if process.poll() is not None:
            break
        time.sleep(0.2)
    tail = "\n".join(log_path.read_text().splitlines()[-10:])
    raise BenchmarkError(f"the node did not start (exit code {process.poll()}); last output:\n{tail}")


async def timed_generation(address: str, chunk: ChunkPrompt) -> Timing:
    """Ask the node directly (greedy, as for a one-answer chunk) and time its first text and its end."""
    request = dellm_pb2.GenerateRequest(prompt=chunk.prompt, system=chunk.system, max_tokens=chunk.max_tokens,
                                        temperature=0.0)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = dellm_pb2_grpc.NodeServiceStub(channel)
        await channel.channel_ready()
        started = time.perf_counter()
        first: float | None = None
        async for piece in stub.Generate(request, timeout=REQUEST_TIMEOUT_S):
            if first is None and (piece.text or piece.logprobs):
                first = time.perf_counter()
        ended = time.perf_counter()
    if first is None:
        raise BenchmarkError("a generation ended without any text")
    return Timing(first - started, ended - started)


def summary(timings: list[Timing]) -> dict[str, Any]:
    ttfts = [t.ttft_s for t in timings]
    return {
        "ttft_median_s": statistics.median(ttfts),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_mean_s": statistics.mean(ttfts),
        "total_s": sum(t.total_s for t in timings),
        "ttft_s": [round(t, 4) for t in ttfts],
    }


def measure(requests: int, threads: int, max_tokens: int, model: str) -> dict[str, Any]:
    prompts = chunk_prompts(requests, max_tokens)
    timings: dict[str, list[Timing]] = {mode: [] for mode in MODES}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="dellm-prompt-cache-") as folder, contextlib.ExitStack() as stack:
        workdir = Path(folder)
        addresses = {mode: stack.enter_context(node_process(f"bench-{mode.replace('_', '-')}", model, threads,
                                                            mode == "cache_on", workdir))
                     for mode in MODES}
        warm_up = ChunkPrompt("Say hello.", DispatchConfig().system_prompt, 4)
        for address in addresses.values():  # the first generation pages the model in
            asyncio.run(timed_generation(address, warm_up))
        for index, chunk in enumerate(prompts):
            order = MODES if index % 2 == 0 else MODES[::-1]
            for mode in order:
                timings[mode].append(asyncio.run(timed_generation(addresses[mode], chunk)))
    load_after = os.getloadavg()
    figures: dict[str, Any] = {
        "model": model, "threads_per_node": threads, "requests_per_mode": requests, "max_tokens": max_tokens,
        "program_system_prompt_requests": sum(p.system == DispatchConfig().program_system_prompt for p in prompts),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        **{mode: summary(timings[mode]) for mode in MODES},
    }
    on, off = figures["cache_on"], figures["cache_off"]
    figures["ttft_median_ratio_on_to_off"] = on["ttft_median_s"] / off["ttft_median_s"]
    figures["paired_ttft_saving_median_s"] = statistics.median(
        b.ttft_s - a.ttft_s for a, b in zip(timings["cache_on"], timings["cache_off"], strict=True))
    for mode in MODES:
        print(f"{mode}: TTFT median {figures[mode]['ttft_median_s']:.3f}s, p95 {figures[mode]['ttft_p95_s']:.3f}s, "
              f"total {figures[mode]['total_s']:.1f}s over {requests} requests")
    print(f"paired TTFT saving (off - on), median: {figures['paired_ttft_saving_median_s']:.3f}s; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20, help="chunk prompts per mode (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of each node (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=32,
                        help="answer length cap; the time to first token does not depend on it (default %(default)s)")
    parser.add_argument("--model", default=MODEL, help="catalogue name or .gguf path (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "prompt_cache.json")
    args = parser.parse_args()
    if args.requests < 2:
        parser.error("--requests must be at least 2")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.max_tokens < 1:
        parser.error("--max-tokens must be at least 1")
    return run_and_report(args.out, "bench_prompt_cache.py",
                          partial(measure, args.requests, args.threads, args.max_tokens, args.model))


if __name__ == "__main__":
    sys.exit(main())
