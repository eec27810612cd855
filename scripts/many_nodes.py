#!/usr/bin/env python3
"""Serve N scripted test-double nodes from one process, each with its own gRPC server and
its own mDNS advertisement (for discovery benchmarks; run it inside a private namespace).

Prints "advertising N nodes at <unix time>" when it starts registering, and "ready" once all
are registered; stops (saying goodbye) on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dellm.node.backends.scripted import ScriptedBackend
from dellm.node.config import NodeConfig
from dellm.node.daemon import node_info, start_node
from dellm.node.state import FEEDBACK_FILE, FeedbackStore
from dellm.protos.transport import wait_for_signal


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    state = Path(tempfile.mkdtemp(prefix="dellm-many-"))
    backend = ScriptedBackend.from_dict({"model": "scripted-many", "default": {"reply": "ok"}})
    store = FeedbackStore(state / FEEDBACK_FILE)
    print(f"advertising {args.count} nodes at {time.time():.6f}", flush=True)
    nodes = await asyncio.gather(*(
        start_node(backend, node_info(f"{i:032x}", f"many-{i}", backend, cluster=args.cluster), store,
                   NodeConfig(listen="127.0.0.1:0", cluster=args.cluster, advertise=True, interface=args.interface,
                              state_dir=state))
        for i in range(1, args.count + 1)
    ))
    print("ready", flush=True)
    try:
        await wait_for_signal()
    finally:
        await asyncio.gather(*(n.stop(0) for n in nodes))
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
