"""What every benchmark script writes the same way: the machine line and the JSON report."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from dellm.client.errors import DellmError
from dellm.client.local_cluster import ClusterError
from dellm.coordinator.config import DispatchConfig
from dellm.node.daemon import hardware_summary
from dellm.protos import dellm_pb2, dellm_pb2_grpc


class BenchmarkError(RuntimeError):
    """Something a benchmark saw go wrong (a failed query, a missing answer): reported instead of a figure."""


def machine() -> str:
    """The machine a figure was measured on: cores, memory, platform and Python."""
    return f"{hardware_summary()}, Python {platform.python_version()}"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def command_line(script: str) -> str:
    """How to run this benchmark again: the script and the arguments it was given."""
    return " ".join([f"scripts/{script}", *sys.argv[1:]])


def run_and_report(out: Path, script: str, measure: Callable[[], dict[str, Any]]) -> int:
    """Run ``measure`` and write its figures with the machine and the command; exit status 0.

    When the run fails (a query errs, a process does not start), the report says so instead of
    carrying a figure (``"error": ...``), the reason is printed, and the exit status is 1.
    """
    command = command_line(script)
    try:
        figures = measure()
    except (BenchmarkError, DellmError, ClusterError, grpc.RpcError, OSError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        write_report(out, {"machine": machine(), "command": command, "error": reason})
        print(f"{script}: no figures, the run failed: {reason}", file=sys.stderr)
        return 1
    write_report(out, {"machine": machine(), "command": command, **figures})
    return 0


async def node_stream(address: str, prompt: str, max_tokens: int, timeout: float
                      ) -> AsyncIterator[dellm_pb2.TokenChunk]:
    """A node's Generate stream for ``prompt``, asked directly (no coordinator) with the coordinator's system
    prompt: what one node does with a question on its own."""
    async with grpc.aio.insecure_channel(address) as channel:
        request = dellm_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens,
                                            system=DispatchConfig().system_prompt)
        async for chunk in dellm_pb2_grpc.NodeServiceStub(channel).Generate(request, timeout=timeout):
            yield chunk


def positive_ints(text: str) -> list[int]:
    """An argparse type: "1,2,4" as [1, 2, 4]; anything else is refused with a message."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {text!r}")
    return values


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
            raise BenchmarkError(f"the bare gRPC echo server did not start (exit code {echo.poll()})")
        yield f"127.0.0.1:{port}"
    finally:
        echo.terminate()
        echo.wait()
