#!/usr/bin/env python3
"""Benchmark: what the HTTP gateway adds to a query, next to asking the coordinator over gRPC.

Real processes on loopback: a coordinator, three scripted test-double nodes (instant answers; arithmetic
right with probability 0.95, 0.7 and 0.4), and `dellm gateway` in front of the coordinator. Measured in the
same run, alternating, one query at a time:

  grpc         `dellm ask`'s path: DellmClient.ask, every event read
  http         POST /v1/chat/completions, the whole JSON answer (what the openai SDK does)
  http-stream  the same with "stream": true, read to `data: [DONE]`

Reports p50/p99 of each and the gateway's added latency (http minus grpc). Then, with --screenshot,
asks arithmetic through the gateway so that the nodes' fitness parts ways, and saves the status page as
a headless Chromium renders it. Results: bench-results/gateway.json (and bench-results/gateway_status_page.png).

    python scripts/bench_gateway.py --rounds 300 --screenshot bench-results/gateway_status_page.png
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import DellmClient  # noqa: E402
from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import BenchmarkError, run_and_report  # noqa: E402
from scripts.chromium_page import ChromiumPage  # noqa: E402

QUERY = "Find cheap laptops"
NODES = (("steady", 0.95), ("shaky", 0.7), ("sloppy", 0.4))


def node_script(accuracy: float, seed: int) -> str:
    return (f'model = "scripted-{int(accuracy * 100)}pct"\n\n[default]\nreply = "cheap ones"\n\n'
            f"[arithmetic]\naccuracy = {accuracy}\nseed = {seed}\n")


def start_gateway(coordinator: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, "-m", "dellm.client.cli", "gateway", "--coordinator", coordinator,
                                "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("dellm gateway listening on "):
        process.kill()
        raise BenchmarkError(f"the gateway did not start: {line!r}; see {log}")
    return process, line.split()[4]


async def measure(rounds: int, coordinator: str, url: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"grpc": [], "http": [], "http-stream": []}
    body = {"model": "dellm", "messages": [{"role": "user", "content": QUERY}]}
    async with DellmClient(coordinator) as client, httpx.AsyncClient(base_url=url, timeout=60) as http:
        async def grpc_step() -> None:
            events = [e async for e in client.ask(QUERY)]
            if events[-1].WhichOneof("event") != "final":
                raise BenchmarkError(f"the query ended without an answer: {events[-1]}")

        async def http_step() -> None:
            reply = await http.post("/v1/chat/completions", json=body)
            if reply.status_code != 200:
                raise BenchmarkError(f"HTTP {reply.status_code}: {reply.text[:300]}")

        async def stream_step() -> None:
            async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as reply:
                lines = [line async for line in reply.aiter_lines() if line.startswith("data:")]
            if not lines or lines[-1] != "data: [DONE]":
                raise BenchmarkError(f"the stream did not end with [DONE]: {lines[-2:]}")

        steps = {"grpc": grpc_step, "http": http_step, "http-stream": stream_step}
        for round_ in range(rounds + 10):  # the first 10 warm every path up
            for name, step in steps.items():
                started = time.perf_counter()
                await step()
                if round_ >= 10:
                    times[name].append((time.perf_counter() - started) * 1000)
    return times


async def teach(url: str, queries: int, seed: int = 7) -> None:
    """Arithmetic through the gateway: exact checks reward the right nodes, so fitness parts ways."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for _ in range(queries):
            a, b = rng.randint(12, 99), rng.randint(3, 19)
            question = rng.choice([f"What is {a} * {b}?", f"What is {a * 10} + {b * 7}?"])
            await http.post("/v1/chat/completions",
                            json={"model": "dellm", "messages": [{"role": "user", "content": question}]})
            await asyncio.sleep(0.05)  # let the status board sample fitness between queries


def screenshot(url: str, out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise BenchmarkError("--screenshot needs chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, ChromiumPage(browser, Path(profile), 1280, 1000) as page:
        page.open(url + "/")
        page.wait_for("document.querySelectorAll('#plot polyline').length >= 3 && "
                      "document.querySelectorAll('#queries-body tr[data-query-id]').length > 0")
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(out, full_page=False)


def measure_all(rounds: int, shot: Path | None, teach_queries: int) -> dict[str, Any]:
    with LocalCluster() as cluster:
        cluster.start_coordinator(extra=["--canary-interval", "0", "--discovery", "none"])
        specs = [NodeSpec(name, backend="scripted", script=cluster.write_script(name, node_script(accuracy, i + 1)))
                 for i, (name, accuracy) in enumerate(NODES)]
        cluster.start_nodes(specs)
        gateway, url = start_gateway(cluster.coordinator_address, cluster.workdir / "gateway.log")
        try:
            times = asyncio.run(measure(rounds, cluster.coordinator_address, url))
            if shot is not None:
                asyncio.run(teach(url, teach_queries))
                time.sleep(2.5)  # one more poll of the nodes' fitness
                screenshot(url, shot)
            metrics = httpx.get(url + "/metrics", timeout=30).text
        finally:
            gateway.terminate()
            gateway.wait(30)
    summary = {f"{name}_ms": {"p50": statistics.median(values), "p99": percentile(values, 99)}
               for name, values in times.items()}
    added = {"p50": summary["http_ms"]["p50"] - summary["grpc_ms"]["p50"],
             "p99": summary["http_ms"]["p99"] - summary["grpc_ms"]["p99"]}
    for name in times:
        print(f"{name}: p50 {summary[f'{name}_ms']['p50']:.2f} ms, p99 {summary[f'{name}_ms']['p99']:.2f} ms")
    print(f"added by the gateway (http - grpc): p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms over "
          f"{rounds} queries")
    if shot is not None:
        print(f"status page screenshot: {shot}")
    answered = [line for line in metrics.splitlines() if line.startswith('dellm_queries_total{outcome="answered"}')]
    return {**summary, "gateway_added_ms": added, "rounds": rounds, "query": QUERY,
            "nodes": [{"name": n, "arithmetic_accuracy": a} for n, a in NODES],
            "screenshot": None if shot is None else str(shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot),
            "gateway_queries_answered": answered[0].split()[-1] if answered else None,
            "samples_ms": times}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gateway.json")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the status page here (PNG)")
    parser.add_argument("--teach", type=int, default=60, help="arithmetic queries before the screenshot")
    args = parser.parse_args()
    if args.rounds < 10:
        parser.error("--rounds must be at least 10")
    if args.teach < 0:
        parser.error("--teach must be 0 or more")
    return run_and_report(args.out, "bench_gateway.py",
                          partial(measure_all, args.rounds, args.screenshot and args.screenshot.resolve(), args.teach))


if __name__ == "__main__":
    sys.exit(main())
