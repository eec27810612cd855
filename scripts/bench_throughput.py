#!/usr/bin/env python3
"""Benchmark: sustained queries per second, against the bare gRPC stream rate measured in the same run.

A coordinator and ``--nodes`` scripted test-double nodes (each its own process) that answer
instantly; ``--clients`` concurrent clients, spread over ``--client-procs`` processes, each asking
one query after another for ``--seconds`` (after a warm-up). The query is a one-chunk sum, answered
right by every node and checked exactly by the coordinator. Then the same clients drive a bare
grpc.aio server-streaming echo (one process, four messages a call) for the same time: the rate the
transport itself allows on this machine. Issue 6 target: at least 300 answered queries per second
with zero errors. Results: bench-results/throughput.json.

    python scripts/bench_throughput.py --nodes 20 --clients 64 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import ClientConfig, DellmClient  # noqa: E402
from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.client.errors import DellmError  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import (  # noqa: E402
    ECHO_METHOD,
    BenchmarkError,
    bare_echo_server,
    run_and_report,
)

QUERY = "What is {a} + {b}?"
SCRIPT = 'model = "scripted-instant"\n\n[arithmetic]\naccuracy = 1.0\n\n[default]\nreply = "I do not know."\n'


async def _drive(target: str, address: str, clients: int, warmup_s: float, seconds: float, first: int
                 ) -> dict[str, Any]:
    """``clients`` concurrent loops against ``target`` ("dellm" or "bare"); counts what ends in the window."""
    started = time.perf_counter()
    window = (started + warmup_s, started + warmup_s + seconds)
    latencies: list[float] = []
    finished: list[float] = []  # seconds into the window at which each call ended well
    errors: list[str] = []

    def record(begun: float, ended: float, error: str | None) -> None:
        """Count a call that began and ended inside the window."""
        if window[0] <= begun and ended <= window[1]:
            if error:
                errors.append(error)
            else:
                latencies.append((ended - begun) * 1000)
                finished.append(ended - window[0])

    async def dellm_loop(index: int) -> None:
        async with DellmClient(address, ClientConfig(ask_timeout_s=30.0)) as client:
            n = 0
            while time.perf_counter() < window[1]:
                n += 1
                begun = time.perf_counter()
                try:
                    events = [e async for e in client.ask(QUERY.format(a=first + index, b=n))]
                    final = events[-1].final if events and events[-1].WhichOneof("event") == "final" else None
                    error = None if final is not None and final.answer.strip() else "no final answer"
                except DellmError as exc:
                    error = str(exc)
                record(begun, time.perf_counter(), error)

    async def bare_loop(index: int) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_stream(ECHO_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            while time.perf_counter() < window[1]:
                begun = time.perf_counter()
                try:
                    replies = [m async for m in call(b"x" * 64)]
                    error = None if len(replies) == 4 else f"{len(replies)} replies"
                except grpc.aio.AioRpcError as exc:
                    error = f"{exc.code().name}: {exc.details()}"
                record(begun, time.perf_counter(), error)

    loop = dellm_loop if target == "dellm" else bare_loop
    await asyncio.gather(*(loop(i) for i in range(clients)))
    return {"latencies": latencies, "finished": finished, "errors": errors}


def _worker(args: tuple[str, str, int, float, float, int]) -> dict[str, Any]:
    return asyncio.run(_drive(*args))


def run_clients(target: str, address: str, clients: int, procs: int, warmup_s: float, seconds: float
                ) -> dict[str, Any]:
    """Spread ``clients`` over ``procs`` processes; answered per second over the measured window."""
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    jobs = [(target, address, share, warmup_s, seconds, 1000 * i) for i, share in enumerate(shares) if share]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_worker, jobs)
    latencies = [x for part in parts for x in part["latencies"]]
    per_second = [0] * max(1, int(seconds))
    for at in (x for part in parts for x in part["finished"]):
        per_second[min(len(per_second) - 1, int(at))] += 1
    errors = [x for part in parts for x in part["errors"]]
    return {
        "per_second": len(latencies) / seconds,
        "completed": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "per_second_series": per_second,  # completions in each second of the window
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--client-procs", type=int, default=2, help="processes the clients are spread over")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window opens")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "throughput.json")
    args = parser.parse_args()
    if args.nodes < 1 or args.clients < 1 or args.client_procs < 1:
        parser.error("--nodes, --clients and --client-procs must be at least 1")
    if args.client_procs > args.clients:
        parser.error(f"--client-procs ({args.client_procs}) cannot exceed --clients ({args.clients})")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be positive and --warmup not negative")

    return run_and_report(args.out, "bench_throughput.py", partial(measure, args))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with LocalCluster() as cluster:
        script = cluster.write_script("instant", SCRIPT)
        # every client here is on 127.0.0.1: the per-client limit must admit all of them
        cluster.start_coordinator(extra=["--canary-interval", "0", "--max-queries-per-client", str(args.clients),
                                         "--max-queries", str(max(256, args.clients))])
        cluster.start_nodes([NodeSpec(f"instant-{i}", backend="scripted", script=script)
                             for i in range(args.nodes)])
        print(f"{args.nodes} nodes up; {args.clients} clients for {args.seconds:.0f} s", flush=True)
        dellm = run_clients("dellm", cluster.coordinator_address, args.clients, args.client_procs, args.warmup,
                            args.seconds)
    with bare_echo_server() as bare_address:
        bare = run_clients("bare", bare_address, args.clients, args.client_procs, args.warmup, args.seconds)
    for name, result in (("DELLM queries", dellm), ("bare grpc.aio streams", bare)):
        p50 = f"{result['p50_ms']:.1f}" if result["p50_ms"] is not None else "-"
        print(f"{name}: {result['per_second']:.1f}/s, {result['errors']} errors, p50 {p50} ms")
    for name, result in (("DELLM", dellm), ("bare gRPC", bare)):
        if result["errors"]:  # a rate with errors in it is not the figure asked for
            raise BenchmarkError(f"{name}: {result['errors']} of {result['errors'] + result['completed']} calls "
                                 f"failed, e.g. {result['error_examples'][0]}")
    return {
        "nodes": args.nodes, "clients": args.clients, "client_procs": args.client_procs, "seconds": args.seconds,
        "dellm": dellm, "bare": bare,
        "share_of_bare_rate": dellm["per_second"] / bare["per_second"] if bare["per_second"] else None,
        "target_per_second": 300,
    }


if __name__ == "__main__":
    sys.exit(main())
