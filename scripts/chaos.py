#!/usr/bin/env python3
"""Chaos and load: real processes, real faults, and a count of how every query ended.

Starts a coordinator and scripted test-double nodes as processes on loopback, then runs a fixed
number of queries from --clients concurrent clients while faults are injected:

  kill     SIGKILL a random node every --kill-every seconds (restarted a second later)
  stop     SIGSTOP a random node for 2 s (a node that hangs mid-stream), every 3 s
  garbage  one node answers with malformed, looping output
  restart  the coordinator is killed (SIGKILL) once, mid-run, and restarted on the same port
           and registry; nodes come back by themselves
  rogue    hostile contributors beside the honest nodes (scripts/chaos_rogues.py): a logprob bomb, a
           slowloris, a feedback replayer, a hijacker and a Join flood, with probation on

Every query must end in an answer or a clear gRPC status; "lost" (no answer and no status within
the client's deadline, DEADLINE_EXCEEDED included) must be zero, and no rogue's answer may win a
vote. Results: bench-results/chaos_<scenario>.json, with the coordinator's peak RSS.

    python scripts/chaos.py --scenario calm --queries 300 --clients 16
    python scripts/chaos.py --scenario kill --queries 300 --clients 16
    python scripts/chaos.py --scenario all --queries 400 --clients 16
    python scripts/chaos.py --scenario calm --queries 2000 --clients 64 --nodes 20   # load
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dellm.client.api import ClientConfig, DellmClient  # noqa: E402
from dellm.client.bench.scoring import percentile  # noqa: E402
from dellm.client.errors import DeadlineError, DellmError  # noqa: E402
from dellm.client.local_cluster import LocalCluster, NodeSpec  # noqa: E402
from scripts.bench_report import command_line, machine, write_report  # noqa: E402
from scripts.chaos_rogues import WRONG, Rogues  # noqa: E402
from tests.redis_server import free_port  # noqa: E402

QUESTIONS = ["What is 12 * 7?", "Tell me about Paris", "What is 250 + 125?", "Find cheap laptops and find cheap phones"]


GOOD = ('model = "scripted-good"\n\n[arithmetic]\naccuracy = 1.0\ndelay = 0.02\n\n'
        '[default]\nreply = "Paris is the capital of France and a fine city."\ndelay = 0.02\n')
GARBAGE = 'model = "scripted-garbage"\n\n[default]\nreply = "' + "la " * 60 + '"\n'


class Faults:
    """Injects the scenario's faults from a thread until stopped."""

    def __init__(self, cluster: LocalCluster, specs: dict[str, NodeSpec], scenario: str, kill_every: float,
                 restart_at: float, coordinator_flags: list[str]) -> None:
        self.cluster, self.specs, self.scenario = cluster, specs, scenario
        self.coordinator_flags = coordinator_flags
        self.kill_every, self.restart_at = kill_every, restart_at
        self.log: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _victim(self) -> str:
        return random.choice([n for n in self.specs if n != "garbage"])

    def _run(self) -> None:
        started = time.monotonic()
        next_kill = next_stop = started + 1.0
        restarted = False
        while not self._stop.wait(0.05):
            now = time.monotonic()
            if self.scenario in ("kill", "all") and now >= next_kill:
                name = self._victim()
                self._signal(name, signal.SIGKILL)
                self._stop.wait(1.0)
                self._respawn(name)
                next_kill = time.monotonic() + self.kill_every
            if self.scenario in ("stop", "all") and now >= next_stop:
                name = self._victim()
                self._signal(name, signal.SIGSTOP)
                self._stop.wait(2.0)
                self._signal(name, signal.SIGCONT)
                next_stop = time.monotonic() + 3.0
            if self.scenario in ("restart", "all") and not restarted and now - started >= self.restart_at:
                restarted = True
                coordinator = self.cluster.node("coordinator")
                coordinator.process.send_signal(signal.SIGKILL)
                coordinator.process.wait()
                self.cluster.processes.remove(coordinator)
                self.log.append(f"{now - started:.1f}s SIGKILL coordinator")
                self.cluster.start_coordinator(extra=self.coordinator_flags)
                self.log.append(f"{time.monotonic() - started:.1f}s coordinator restarted")

    def _signal(self, name: str, sig: signal.Signals) -> None:
        managed = next((p for p in self.cluster.processes if p.name == name), None)
        if managed is not None and managed.process.poll() is None:
            managed.process.send_signal(sig)
            self.log.append(f"{sig.name} {name}")

    def _respawn(self, name: str) -> None:
        managed = next((p for p in self.cluster.processes if p.name == name), None)
        if managed is not None:
            managed.process.wait()
            self.cluster.processes.remove(managed)
        self.cluster.start_node(self.specs[name])


async def ask_once(client: DellmClient, query: str, winners: list[tuple[str, str]] | None = None
                   ) -> tuple[str, str]:
    """How one query ended; ``winners`` collects (node id, answer) of each chunk's winning answer."""
    try:
        final = None
        async for event in client.ask(query):
            if event.WhichOneof("event") == "final":
                final = event.final
        if final is not None and final.answer.strip():
            if winners is not None:
                winners.extend((chunk.winner_node_id, chunk.answer) for chunk in final.chunks)
            return "answered", ""
        return "lost", "stream ended without a final event"
    except DeadlineError:  # no answer and no status within the client's deadline: the query was lost
        return "lost", "DEADLINE_EXCEEDED"
    except DellmError as exc:
        return "failed", str(exc).split(":")[0]
    except Exception as exc:  # anything without a status is a lost query
        return "lost", repr(exc)


async def client_loop(address: str, jobs: asyncio.Queue[str], outcomes: list[dict], deadline_s: float,
                      retries: int, winners: list[tuple[str, str]] | None = None) -> None:
    """Like a user: an UNAVAILABLE answer (coordinator restarting, no node) is retried after a pause."""
    async with DellmClient(address, ClientConfig(ask_timeout_s=deadline_s)) as client:
        while True:
            try:
                query = jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            for attempt in range(retries + 1):
                outcome, detail = await ask_once(client, query, winners)
                if outcome != "failed" or detail != "UNAVAILABLE" or attempt == retries:
                    break
                await asyncio.sleep(0.5 * (attempt + 1))
            outcomes.append({"query": query, "outcome": outcome, "detail": detail, "attempts": attempt + 1,
                             "s": time.perf_counter() - started})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["calm", "kill", "stop", "garbage", "restart", "all", "rogue"],
                        default="all")
    parser.add_argument("--flood", type=int, default=100, help="rogue: fake node ids the Join flood tries")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--kill-every", type=float, default=1.0)
    parser.add_argument("--restart-at", type=float, default=5.0, help="seconds into the run")
    parser.add_argument("--deadline", type=float, default=60.0, help="client deadline per query (s)")
    parser.add_argument("--retries", type=int, default=4, help="retries of a query refused as UNAVAILABLE")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.queries < 1 or args.clients < 1 or args.nodes < 2 or args.kill_every <= 0:
        parser.error("--queries and --clients must be >= 1, --nodes >= 2, --kill-every > 0")
    if args.clients > args.queries:
        parser.error("--clients larger than --queries leaves clients with nothing to do")

    with LocalCluster() as cluster:
        good, garbage = cluster.write_script("good", GOOD), cluster.write_script("garbage", GARBAGE)
        # a fixed port, so that a restarted coordinator is where the clients look; every client of this test is
        # on 127.0.0.1: let the per-client limit admit all of them
        flags = ["--listen", f"127.0.0.1:{free_port()}", "--canary-interval", "0",
                 "--max-queries-per-client", str(max(16, args.clients))]
        if args.scenario == "rogue":
            # new nodes answer canaries before they get work; every chunk gets two nodes, so that rogue answers
            # meet an honest one in a vote
            flags += ["--probation-canaries", "2", "--redundancy-threshold", "0"]
        address = cluster.start_coordinator(extra=flags)
        specs = {f"node-{i}": NodeSpec(f"node-{i}", backend="scripted", script=good) for i in range(args.nodes)}
        if args.scenario in ("garbage", "all"):
            specs["garbage"] = NodeSpec("garbage", backend="scripted", script=garbage)
        cluster.start_nodes(list(specs.values()))
        faults = Faults(cluster, specs, args.scenario, args.kill_every, args.restart_at, flags)
        jobs: asyncio.Queue[str] = asyncio.Queue()
        for i in range(args.queries):
            jobs.put_nowait(QUESTIONS[i % len(QUESTIONS)])
        outcomes: list[dict] = []
        winners: list[tuple[str, str]] = []
        rogues = Rogues(address, flood=args.flood) if args.scenario == "rogue" else None
        if rogues is not None:
            rogues.start()
            time.sleep(3.0)  # the rogues join (the smart ones pass probation) before the queries start

        async def run() -> None:
            await asyncio.gather(*(client_loop(address, jobs, outcomes, args.deadline, args.retries, winners)
                                   for _ in range(args.clients)))

        faults.start()
        started = time.perf_counter()
        try:
            asyncio.run(run())
        finally:
            faults.stop()
            if rogues is not None:
                rogues.stop()
        wall = time.perf_counter() - started
        peak_rss_mb = peak_rss(cluster.node("coordinator").process.pid)
        rogue_report = rogues.report() if rogues is not None else None
        if rogues is not None:
            listed = asyncio.run(list_nodes(address))
            rogue_report["registry_nodes"] = len(listed)  # type: ignore[index]
            rogue_report["rogue_nodes"] = {  # type: ignore[index]
                n.info.node_id: {"state": n.state, "fitness": round(n.fitness, 3), "answers": n.answers,
                                 "failures": n.failures}
                for n in listed if n.info.node_id.startswith("rogue-")}
            rogue_report["flood_states"] = dict(Counter(  # type: ignore[index]
                n.state for n in listed if n.info.node_id.startswith("flood-")))
            rogue_report["victims_kept"] = victims_kept(address, rogues.victims)  # type: ignore[index]

    counts = {k: sum(1 for o in outcomes if o["outcome"] == k) for k in ("answered", "failed", "lost")}
    latencies = [o["s"] for o in outcomes if o["outcome"] == "answered"]
    failures: dict[str, int] = {}
    for o in outcomes:
        if o["outcome"] != "answered":
            failures[o["detail"]] = failures.get(o["detail"], 0) + 1

    report = {
        "machine": machine(),
        "command": command_line("chaos.py"),
        "scenario": args.scenario, "queries": args.queries, "clients": args.clients, "nodes": len(specs),
        "counts": counts, "failures_by_status": failures, "wall_s": wall,
        "answered_after_retry": sum(1 for o in outcomes if o["outcome"] == "answered" and o["attempts"] > 1),
        "qps_answered": counts["answered"] / wall,
        "latency_s": {"p50": statistics.median(latencies) if latencies else None,
                      "p99": percentile(latencies, 99) if latencies else float("nan")},
        "faults": faults.log,
        "coordinator_peak_rss_mb": peak_rss_mb,
    }
    if rogue_report is not None:
        rogue_won = [(node, answer) for node, answer in winners if node in rogues.ids]  # type: ignore[union-attr]
        report["rogue"] = {**rogue_report,  # a rogue's right answer (arithmetic, as on its canaries) may win
                           "rogue_wins_right": sum(1 for _, answer in rogue_won if WRONG not in answer),
                           "rogue_wins_wrong": [answer for _, answer in rogue_won if WRONG in answer]}
    out = args.out or ROOT / "bench-results" / f"chaos_{args.scenario}.json"
    write_report(out, report)
    print(f"{args.scenario}: {args.queries} queries from {args.clients} clients on {len(specs)} nodes in {wall:.1f} s: "
          f"answered {counts['answered']}, failed with a clear status {counts['failed']} {failures or ''}, "
          f"lost {counts['lost']}; answered after a retry {report['answered_after_retry']}")
    print(f"  latency p50 {report['latency_s']['p50'] or float('nan'):.3f} s, p99 {report['latency_s']['p99']:.3f} s; "
          f"{report['qps_answered']:.1f} answered queries/s; faults injected: {len(faults.log)}; "
          f"coordinator peak RSS {peak_rss_mb:.0f} MB")
    rogue_wins = report.get("rogue", {}).get("rogue_wins_wrong", [])
    if "rogue" in report:
        print(f"  rogue nodes: {report['rogue']['rogue_nodes']}; flood nodes: {report['rogue']['flood_states']}")
        print(f"  rogues: {report['rogue']['counts']}; wrong rogue answers that won a vote: {len(rogue_wins)} "
              f"(right ones: {report['rogue']['rogue_wins_right']}); "
              f"nodes in the registry: {report['rogue']['registry_nodes']}; hijack victims kept their address: "
              f"{report['rogue']['victims_kept']}")
    return 0 if counts["lost"] == 0 and not rogue_wins else 1


def peak_rss(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB; NaN where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def list_nodes(address: str) -> list:
    async with DellmClient(address) as client:
        return await client.nodes()


def victims_kept(address: str, victims: dict[str, str]) -> bool:
    """Whether every node the hijacker went for is still registered at its own address."""
    listed = {n.info.node_id: n.info.address for n in asyncio.run(list_nodes(address))}
    return all(listed.get(node_id) == where for node_id, where in victims.items())


if __name__ == "__main__":
    sys.exit(main())
