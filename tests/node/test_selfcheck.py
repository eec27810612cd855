"""The generation check: a real model generates in a child process; a crashing build is reported, not fatal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dellm.client.local_cluster import LocalCluster
from dellm.node import selfcheck
from dellm.node.llama_build import BuildInfo
from dellm.node.selfcheck import CACHE_FILE, checked_generation, run_generation_check
from tests.conftest import FIXTURES, REPO, require_model

pytestmark = pytest.mark.model
SMALLEST = "smollm2-135m-instruct"
CRASHING = FIXTURES / "crashing_llama"  # a sitecustomize that makes llama.cpp die with SIGSEGV


@pytest.fixture
def crashing_llama(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(CRASHING), os.environ.get("PYTHONPATH", "")]))
    yield


def test_real_model_generates_tokens_in_a_child_process() -> None:
    result = run_generation_check(require_model(SMALLEST), threads=1)
    assert result.ok, result.message
    assert result.tokens > 0 and result.seconds > 0 and result.tokens_per_s > 0


def test_a_crash_in_the_child_is_reported_with_the_signal_and_the_fix(crashing_llama: None) -> None:
    result = run_generation_check(require_model(SMALLEST), threads=1, build_version="0.3.36")
    assert not result.ok
    assert "crashed with signal 11 (SIGSEGV) on this CPU" in result.message
    assert "CMAKE_ARGS=" in result.message and "--no-cache-dir" in result.message and "\n" not in result.message


def test_result_is_cached_per_model_and_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = require_model(SMALLEST)
    cache = tmp_path / CACHE_FILE
    first = checked_generation(model, cache, threads=1)
    assert first.ok and not first.cached, first.message
    again = checked_generation(model, cache, threads=1)
    assert again.ok and again.cached and again.tokens == first.tokens

    # A rebuilt library is a new build: checked again, and a crash now is remembered as a failure.
    real = selfcheck.installed_build()
    rebuilt = tmp_path / "libllama-rebuilt.so"
    rebuilt.write_bytes(b"another build")
    monkeypatch.setattr(selfcheck, "installed_build", lambda: BuildInfo(real.version, rebuilt, real.system_info))
    monkeypatch.setenv("PYTHONPATH", str(CRASHING))
    crashed = checked_generation(model, cache, threads=1)
    assert not crashed.ok and not crashed.cached and "SIGSEGV" in crashed.message
    assert checked_generation(model, cache, threads=1).cached


def test_node_whose_backend_crashes_never_joins(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    cache.mkdir()
    os.symlink(require_model(SMALLEST), cache / f"{SMALLEST}.gguf")  # the real file, a fresh check cache
    with LocalCluster(tmp_path) as cluster:
        cluster.start_coordinator()
        port = _free_port()
        env = dict(os.environ, DELLM_CACHE_DIR=str(cache), PYTHONPATH=str(CRASHING))
        done = subprocess.run(
            [sys.executable, "-m", "dellm.node.cli", "--model", SMALLEST, "--name", "crashy", "--threads", "1",
             "--listen", f"127.0.0.1:{port}", "--coordinator", cluster.coordinator_address, "--no-advertise",
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False)
        assert done.returncode == 1
        errors = [line for line in done.stderr.splitlines() if line.startswith("dellm-node:")]
        assert len(errors) == 1, done.stderr
        assert "not joining the network" in errors[0] and "crashed with signal 11 (SIGSEGV)" in errors[0]
        assert "Traceback" not in done.stderr
        listed = subprocess.run([sys.executable, "-m", "dellm.client.cli", "nodes", "--json", "--coordinator",
                                 cluster.coordinator_address], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and listed.stdout.strip() == ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
