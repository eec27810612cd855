"""What every benchmark script writes the same way: the machine line and the JSON report."""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from node.server import hardware_summary


def machine() -> str:
    """The machine a figure was measured on: cores, memory, platform and Python."""
    return f"{hardware_summary()}, Python {platform.python_version()}"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# The transport's floor: a grpc.aio server in its own process whose one method streams the request
# back four times (about what an instant node streams for one answer).
ECHO_SERVER = r'''
import asyncio, grpc
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
ECHO_METHOD = "/bench.Echo/Stream"


@contextlib.contextmanager
def bare_echo_server() -> Iterator[str]:
    """Start the bare grpc.aio streaming server in another process; yields its address."""
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        port = echo.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError(f"the bare gRPC echo server did not start (exit code {echo.poll()})")
        yield f"127.0.0.1:{port}"
    finally:
        echo.terminate()
        echo.wait()
