"""``dellm demo``: a coordinator and three real-model nodes on loopback answer the seed's query."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from dellm.client.api import DellmClient
from dellm.client.local_cluster import ClusterError, LocalCluster, NodeSpec
from dellm.client.netns import in_private_netns, inside_private_netns, netns_unavailable_reason
from dellm.client.render import ProgressPrinter, nodes_table

SEED_QUERY = "Calculate 10% interest on $1000 then find best savings accounts"
QWEN = "qwen2.5-coder-0.5b-instruct"
QWEN_LARGE = "qwen2.5-coder-1.5b-instruct"
# A mixed network: the strongest PyPI model beside two copies of the workhorse, so that knowledge
# chunks can go to different models. Two cores shared by three nodes and the synthesis model: one
# thread each keeps them from fighting over the cores (measured: more threads per node made parallel
# chunks slower).
DEMO_NODES = (
    NodeSpec("demo-qwen-1.5b", QWEN_LARGE, threads=1),
    NodeSpec("demo-qwen-a", QWEN, threads=1),
    NodeSpec("demo-qwen-b", QWEN, threads=1),
)


async def _ask_and_show(address: str, query: str) -> None:
    async with DellmClient(address) as client:
        names = {n.info.node_id: n.info.name for n in await client.nodes()}
        printer = ProgressPrinter(sys.stdout, names)
        async for event in client.ask(query):
            printer.show(event)
        print("\nnodes after the rewards:")
        print(nodes_table(await client.nodes(), time.time()))


def run_demo(query: str | None = None, synth_model: str | None = None, discovery: str = "join") -> int:
    """``discovery``: "join" (nodes join the coordinator by address) or "mdns" (they are found by
    mDNS alone, inside a private network namespace so that nothing reaches the host's LAN)."""
    from dellm.node.models import ModelError, pull_model

    if discovery == "mdns" and not inside_private_netns():
        reason = netns_unavailable_reason()
        if reason is not None:
            print(f"dellm demo: real mDNS runs only in a private network namespace, and {reason}", file=sys.stderr)
            return 2
        argv = [sys.executable, "-m", "dellm.client.cli", "demo", "--discovery", "mdns", "--query", query or SEED_QUERY]
        if synth_model:
            argv += ["--synth-model", synth_model]
        print("entering a private network namespace for the mDNS demo", flush=True)
        return subprocess.run(in_private_netns(argv), check=False).returncode
    query = query or SEED_QUERY
    try:
        for name in (QWEN, QWEN_LARGE):
            print(f"model {name}: {pull_model(name, progress=lambda m: print('  ' + m, flush=True))}")
    except ModelError as exc:
        print(f"dellm demo: {exc}", file=sys.stderr)
        return 2
    with LocalCluster(mdns=discovery == "mdns") as cluster:
        try:
            print(f"starting the coordinator (logs in {cluster.workdir})", flush=True)
            address = cluster.start_coordinator(synth_model=synth_model or QWEN, extra=["--synth-threads", "2"])
            for spec in DEMO_NODES:
                node = cluster.start_node(spec)
                print(f"started {spec.name} ({spec.model}) on {node.address}", flush=True)
            waited = time.perf_counter()
            cluster.wait_for_nodes(len(DEMO_NODES))
            how = "found by mDNS" if discovery == "mdns" else "joined"
            print(f"all {len(DEMO_NODES)} nodes {how} in {time.perf_counter() - waited:.2f} s", flush=True)
        except ClusterError as exc:
            print(f"dellm demo: {exc}", file=sys.stderr)
            return 1
        print(f"\ndellm ask {query!r}\n", flush=True)
        started = time.perf_counter()
        asyncio.run(_ask_and_show(address, query))
        print(f"\n(demo query took {time.perf_counter() - started:.2f} s end to end; stopping the cluster)")
    return 0
