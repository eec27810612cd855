"""A real redis-server for the registry tests: one per session, a clean keyspace per test.

Without ``redis-server`` on PATH (Debian package ``redis-server``) the Redis cases are skipped,
unless DELLM_REQUIRE_REDIS=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

STARTUP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(url: str, process: subprocess.Popen[bytes]) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING on {url} within {STARTUP_TIMEOUT_S:.0f} s")
    finally:
        client.close()


def _redis_binary() -> str:
    """Path of redis-server; skips the test (fails it under DELLM_REQUIRE_REDIS=1) when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("DELLM_REQUIRE_REDIS") == "1":
            pytest.fail(f"{reason}, and DELLM_REQUIRE_REDIS=1", pytrace=False)
        pytest.skip(reason)
    return binary


class RedisServerProcess:
    """One redis-server subprocess on a free loopback port, without persistence."""

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_ping(self.url, self._process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of the session's redis-server."""
    server = RedisServerProcess(_redis_binary())
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_redis_server() -> Iterator[RedisServerProcess]:
    """A redis-server of this test's own, which the test may stop (fault tests)."""
    server = RedisServerProcess(_redis_binary())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's redis-server, its database flushed for this test."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server
