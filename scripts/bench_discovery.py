#!/usr/bin/env python3
"""Benchmark: discovery and membership over real mDNS, inside a private network namespace.

Measures (targets from issue 3):
  1. time from `dellm-node` start to its first routable moment (listed up by the coordinator),
     for a scripted test-double node and for a real llama.cpp node (target < 2 s);
  2. time from SIGKILL of a node to the coordinator no longer routing to it (target < 3 s);
  3. 50 nodes advertised at once: how many are found, and how long it takes (target: all 50).

Re-executes itself under `unshare -n` so that multicast stays off the host's interfaces.
Results: bench-results/discovery.json.

    python scripts/bench_discovery.py [--runs 5] [--many 50]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import DellmClient  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from dellm.client.netns import in_private_netns, inside_private_netns, netns_unavailable_reason  # noqa: E402
from scripts.bench_report import command_line, machine, write_report  # noqa: E402

SCRIPT = ROOT / "tests" / "fixtures" / "good.toml"


def states(address: str) -> dict[str, str]:
    async def fetch() -> dict[str, str]:
        async with DellmClient(address) as client:
            return {n.info.name: n.state for n in await client.nodes()}

    return asyncio.run(fetch())


def wait_for(address: str, predicate, timeout: float) -> float:
    started = time.perf_counter()
    while True:
        if predicate(states(address)):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def time_to_routable(cluster: LocalCluster, spec: NodeSpec) -> float:
    """Spawn the node and time until the coordinator lists it up (includes process start-up)."""
    started = time.perf_counter()
    cluster.start_node(spec, ready_timeout=120)
    wait_for(cluster.coordinator_address, lambda s: s.get(spec.name) == "up", timeout=60)
    return time.perf_counter() - started


def time_to_route_around(cluster: LocalCluster, name: str) -> float:
    managed = cluster.node(name)
    managed.process.send_signal(signal.SIGKILL)
    took = wait_for(cluster.coordinator_address, lambda s: s.get(name) != "up", timeout=30)
    cluster.processes.remove(managed)
    return took


def many_nodes(cluster: LocalCluster, count: int) -> dict[str, float | int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "many_nodes.py"), "--count", str(count)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        started = float(first.rsplit(" ", 1)[1])
        found, deadline = 0, time.time() + 60
        while time.time() < deadline:
            listed = states(cluster.coordinator_address)
            found = sum(1 for name, state in listed.items() if name.startswith("many-") and state == "up")
            if found >= count:
                break
            time.sleep(0.05)
        return {"advertised": count, "found": found, "seconds_to_all": time.time() - started}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {}
    with LocalCluster(mdns=True) as cluster:
        cluster.start_coordinator()
        scripted = [time_to_routable(cluster, NodeSpec(f"s{i}", backend="scripted", script=SCRIPT))
                    for i in range(args.runs)]
        results["start_to_routable_scripted_s"] = scripted
        llama = [time_to_routable(cluster, NodeSpec(f"q{i}", "qwen2.5-coder-0.5b-instruct", threads=1))
                 for i in range(min(args.runs, 3))]
        results["start_to_routable_llama_cpp_s"] = llama
        kills = [time_to_route_around(cluster, f"s{i}") for i in range(args.runs)]
        results["sigkill_to_routed_around_s"] = kills
        results["many"] = many_nodes(cluster, args.many)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--many", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "discovery.json")
    args = parser.parse_args()
    if args.runs < 1 or args.many < 1:
        parser.error("--runs and --many must be at least 1")
    if not inside_private_netns():
        reason = netns_unavailable_reason()
        if reason:
            print(f"bench_discovery: needs a private network namespace: {reason}", file=sys.stderr)
            return 2
        return subprocess.run(in_private_netns([sys.executable, *sys.argv]), check=False).returncode

    results = run(args)
    med = {k: statistics.median(v) for k, v in results.items() if isinstance(v, list)}
    report = {
        "machine": machine(),
        "command": command_line("bench_discovery.py"),
        "health": "coordinator defaults: health check every 1.0 s, 0.8 s deadline, down after 2 misses",
        "results": results,
        "median": med,
        "targets": {"start_to_routable_s": 2.0, "sigkill_to_routed_around_s": 3.0, "many_found": args.many},
    }
    write_report(args.out, report)
    many = results["many"]
    print(f"start -> routable (scripted node): median {med['start_to_routable_scripted_s']:.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in results['start_to_routable_scripted_s'])}; target < 2 s)")
    print(f"start -> routable (llama.cpp qwen 0.5B): median {med['start_to_routable_llama_cpp_s']:.2f} s")
    print(f"SIGKILL -> routed around: median {med['sigkill_to_routed_around_s']:.2f} s "
          f"(runs: {', '.join(f'{x:.2f}' for x in results['sigkill_to_routed_around_s'])}; target < 3 s)")
    print(f"{many['advertised']} nodes advertised at once: {many['found']} found in {many['seconds_to_all']:.2f} s")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
