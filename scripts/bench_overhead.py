#!/usr/bin/env python3
"""Benchmark: what the coordinator costs next to the transport itself.

Measured in the same run, alternating:
  bare    a grpc.aio server-streaming round trip between two processes (the floor the transport
          sets: one request, a few streamed replies)
  dellm   a two-chunk query ("Find cheap laptops and find cheap phones") through the coordinator,
          redundancy 2, on scripted test-double nodes that answer instantly (4 node streams)

Reports p50/p99 of both and their ratio (issue 6 target: DELLM p50 at most 3x bare).
Results: bench-results/overhead.json.

    python scripts/bench_overhead.py --rounds 300
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.api import DellmClient  # noqa: E402
from client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import machine, write_report  # noqa: E402

QUERY = "Find cheap laptops and find cheap phones"
ECHO_SERVER = r'''
import asyncio, sys, grpc
async def stream(request, context):
    for _ in range(4):
        yield request
async def main():
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Stream": grpc.unary_stream_rpc_method_handler(stream, lambda b: b, lambda b: b)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
'''


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def measure(rounds: int, bare_address: str, dellm_address: str) -> tuple[list[float], list[float]]:
    bare, dellm = [], []
    async with grpc.aio.insecure_channel(bare_address) as channel, DellmClient(dellm_address) as client:
        call = channel.unary_stream("/bench.Echo/Stream", request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        for _ in range(10):  # warm both paths up
            [m async for m in call(b"x" * 64)]
            [e async for e in client.ask(QUERY)]
        for _ in range(rounds):
            started = time.perf_counter()
            [m async for m in call(b"x" * 64)]
            bare.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            events = [e async for e in client.ask(QUERY)]
            dellm.append((time.perf_counter() - started) * 1000)
            assert events[-1].WhichOneof("event") == "final"
    return bare, dellm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "overhead.json")
    args = parser.parse_args()
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        bare_address = f"127.0.0.1:{echo.stdout.readline().strip()}"
        with LocalCluster() as cluster:
            script = cluster.workdir / "instant.toml"
            script.write_text('model = "scripted-instant"\n\n[default]\nreply = "cheap ones"\n')
            cluster.start_coordinator(extra=["--canary-interval", "0", "--redundancy-threshold", "0"])
            for i in range(4):
                cluster.start_node(NodeSpec(f"instant-{i}", backend="scripted", script=script))
            cluster.wait_for_nodes(4)
            bare, dellm = asyncio.run(measure(args.rounds, bare_address, cluster.coordinator_address))
    finally:
        echo.terminate()
        echo.wait()
    report = {
        "machine": machine(),
        "command": " ".join(["scripts/bench_overhead.py", *sys.argv[1:]]),
        "bare_ms": {"p50": statistics.median(bare), "p99": percentile(bare, 0.99)},
        "dellm_ms": {"p50": statistics.median(dellm), "p99": percentile(dellm, 0.99)},
        "ratio_p50": statistics.median(dellm) / statistics.median(bare),
        "target_ratio_p50": 3.0,
    }
    write_report(args.out, report)
    print(f"bare grpc.aio stream: p50 {report['bare_ms']['p50']:.2f} ms, p99 {report['bare_ms']['p99']:.2f} ms")
    print(f"DELLM 2 chunks x 2 nodes: p50 {report['dellm_ms']['p50']:.2f} ms, p99 {report['dellm_ms']['p99']:.2f} ms")
    print(f"ratio of p50: {report['ratio_p50']:.1f}x (target at most 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
