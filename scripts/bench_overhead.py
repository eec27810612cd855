#!/usr/bin/env python3
"""Benchmark: what the coordinator costs next to the transport itself.

Measured in the same run, alternating:
  bare    a grpc.aio server-streaming round trip between two processes (the floor the transport
          sets: one request, a few streamed replies)
  dellm   a two-chunk query ("Find cheap laptops and find cheap phones") through the coordinator,
          redundancy 2, on scripted test-double nodes that answer instantly (4 node streams)

  direct  the same four node streams the query fans out to, opened straight from the client to the
          nodes in parallel (what the coordinator's own fan-out cannot go below on this machine)

Reports p50/p99 of each and the ratio of DELLM to bare (issue 6 target: DELLM p50 at most 3x bare).
Results: bench-results/overhead.json.

    python scripts/bench_overhead.py --rounds 300
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import DellmClient  # noqa: E402
from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from dellm.protos import dellm_pb2, dellm_pb2_grpc  # noqa: E402
from scripts.bench_report import (  # noqa: E402
    ECHO_METHOD,
    BenchmarkError,
    bare_echo_server,
    run_and_report,
)

QUERY = "Find cheap laptops and find cheap phones"
NODE_PROMPTS = ("Find cheap laptops", "Find cheap laptops", "find cheap phones", "find cheap phones")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_query(rounds: int, address: str, pids: dict[str, int]) -> dict[str, float]:
    """CPU milliseconds each process spends per query, over ``rounds`` queries asked one after another."""
    async with DellmClient(address) as client:
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        client_before = time.process_time()
        for _ in range(rounds):
            [e async for e in client.ask(QUERY)]
        used = {name: (cpu_seconds(pid) - before[name]) * 1000 / rounds for name, pid in pids.items()}
        used["client"] = (time.process_time() - client_before) * 1000 / rounds
    return used


async def measure(rounds: int, bare_address: str, dellm_address: str, node_addresses: list[str]
                  ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"bare": [], "dellm": [], "direct": []}
    channels = [grpc.aio.insecure_channel(address) for address in node_addresses]
    stubs = [dellm_pb2_grpc.NodeServiceStub(c) for c in channels]

    async def generate(stub: dellm_pb2_grpc.NodeServiceStub, prompt: str) -> list[dellm_pb2.TokenChunk]:
        return [m async for m in stub.Generate(dellm_pb2.GenerateRequest(query_id="q", chunk_id="c", prompt=prompt))]

    try:
        async with grpc.aio.insecure_channel(bare_address) as channel, DellmClient(dellm_address) as client:
            call = channel.unary_stream(ECHO_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            steps = {
                "bare": lambda: call(b"x" * 64),
                "dellm": lambda: client.ask(QUERY),
                "direct": lambda: asyncio.gather(*(generate(s, p) for s, p in zip(stubs, NODE_PROMPTS, strict=True))),
            }
            for round_ in range(rounds + 10):  # the first 10 warm every path up
                for name, step in steps.items():
                    started = time.perf_counter()
                    result = step()
                    replies = await result if asyncio.isfuture(result) else [m async for m in result]
                    if round_ >= 10:
                        times[name].append((time.perf_counter() - started) * 1000)
                    if name == "dellm" and replies[-1].WhichOneof("event") != "final":
                        raise BenchmarkError(f"the query ended without an answer: {replies[-1]}")
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "overhead.json")
    args = parser.parse_args()
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    return run_and_report(args.out, "bench_overhead.py", partial(measure_all, args.rounds))


def measure_all(rounds: int) -> dict[str, Any]:
    with bare_echo_server() as bare_address, LocalCluster() as cluster:
        script = cluster.write_script("instant", 'model = "scripted-instant"\n\n[default]\nreply = "cheap ones"\n')
        cluster.start_coordinator(extra=["--canary-interval", "0", "--redundancy-threshold", "0"])
        nodes = [node.address for node in cluster.start_nodes(
            [NodeSpec(f"instant-{i}", backend="scripted", script=script) for i in range(4)])]
        times = asyncio.run(measure(rounds, bare_address, cluster.coordinator_address, nodes))
        pids = {p.name: p.process.pid for p in cluster.processes}
        cpu = asyncio.run(cpu_per_query(rounds, cluster.coordinator_address, pids)) if Path("/proc").is_dir() else {}
    summary = {f"{name}_ms": {"p50": statistics.median(values), "p99": percentile(values, 99)}
               for name, values in times.items()}
    figures = {
        **summary,
        "ratio_p50": summary["dellm_ms"]["p50"] / summary["bare_ms"]["p50"],
        "ratio_p50_to_direct_fanout": summary["dellm_ms"]["p50"] / summary["direct_ms"]["p50"],
        "target_ratio_p50": 3.0,
        "cpu_ms_per_query": cpu,  # per process, queries asked one after another
        "samples_ms": times,
    }
    labels = {"bare": "bare grpc.aio stream", "direct": "4 node streams from the client",
              "dellm": "DELLM 2 chunks x 2 nodes"}
    for name, label in labels.items():
        print(f"{label}: p50 {summary[f'{name}_ms']['p50']:.2f} ms, p99 {summary[f'{name}_ms']['p99']:.2f} ms")
    if cpu:
        print("CPU per query: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items()))
    print(f"ratio of p50 to bare: {figures['ratio_p50']:.1f}x (target at most 3x); "
          f"to the direct fan-out: {figures['ratio_p50_to_direct_fanout']:.1f}x")
    return figures


if __name__ == "__main__":
    sys.exit(main())
