"""``dellm doctor``: each finding and the verdict, from unit checks and from the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dellm.client.doctor import (
    FAIL,
    OK,
    WARN,
    DoctorOptions,
    Finding,
    can_serve,
    check_coordinator,
    check_cpu,
    check_models,
    render,
)
from dellm.client.local_cluster import LocalCluster
from dellm.protos.security import SecurityConfig
from tests.conftest import FIXTURES, REPO, require_model

SMALLEST = "smollm2-135m-instruct"


def options(address: str, explicit: bool) -> DoctorOptions:
    return DoctorOptions(coordinator=address, coordinator_explicit=explicit, security=SecurityConfig())


def test_an_empty_cache_cannot_serve(tmp_path: Path) -> None:
    findings, verified = check_models(tmp_path)
    assert verified == []
    assert [f for f in findings if f.status == FAIL] == [
        Finding("model", FAIL, "no model is pulled: run `dellm models pull qwen2.5-coder-0.5b-instruct` (491 MB)")]


def test_a_corrupt_model_fails_with_its_name(tmp_path: Path) -> None:
    (tmp_path / f"{SMALLEST}.gguf").write_bytes(b"GGUF" + b"\0" * 100)
    findings, verified = check_models(tmp_path)
    bad = [f for f in findings if f.status == FAIL]
    assert verified == [] and len(bad) == 1 and bad[0].text.startswith(f"{SMALLEST}: ")
    assert f"dellm models rm {SMALLEST}" in bad[0].text


def test_cpu_line_names_amx_when_present() -> None:
    [finding] = check_cpu(frozenset({"avx2", "amx_tile", "amx_int8"}))
    assert "avx2" in finding.text and "amx_tile" in finding.text and "keeps it off" in finding.text
    assert "no AMX" in check_cpu(frozenset({"avx2"}))[0].text


def test_unreachable_coordinator_fails_only_when_asked_for() -> None:
    address = "127.0.0.1:9"  # discard port: nothing listens
    [asked] = check_coordinator(options(address, explicit=True))
    [default] = check_coordinator(options(address, explicit=False))
    assert asked.status == FAIL and default.status == WARN and address in asked.text


def test_verdict_and_rendering() -> None:
    good = [Finding("python", OK, "3.11"), Finding("mdns", WARN, "no zeroconf")]
    assert can_serve(good) and "verdict: this machine can serve" in render(good)
    bad = [*good, Finding("generation", FAIL, "crashed")]
    assert not can_serve(bad) and "cannot serve yet" in render(bad)
    assert "  generation   fail  crashed" in render(bad)


def doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "doctor", "--json", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def by_topic(report: dict[str, Any], topic: str) -> list[dict[str, str]]:
    return [f for f in report["findings"] if f["topic"] == topic]


@pytest.mark.model
@pytest.mark.slow
def test_doctor_on_this_machine(tmp_path: Path) -> None:
    require_model(SMALLEST)
    with LocalCluster(tmp_path) as cluster:
        cluster.start_coordinator()
        code, report = doctor("--coordinator", cluster.coordinator_address)
    assert code == 0 and report["can_serve"], report
    [llama] = by_topic(report, "llama.cpp")
    assert llama["status"] == OK and "no AMX" in llama["text"] and "system info: " in llama["text"]
    [generation] = by_topic(report, "generation")
    assert generation["status"] == OK and "tokens/s" in generation["text"]
    assert any(f["status"] == OK and f["text"].startswith(SMALLEST) for f in by_topic(report, "model"))
    [coordinator] = by_topic(report, "coordinator")
    assert coordinator["status"] == OK and "answers" in coordinator["text"]
    assert by_topic(report, "python")[0]["status"] == OK and by_topic(report, "mdns")


@pytest.mark.model
@pytest.mark.slow
def test_doctor_reports_a_crashing_build_and_exits_non_zero(tmp_path: Path) -> None:
    cache = tmp_path / "models"
    cache.mkdir()
    os.symlink(require_model(SMALLEST), cache / f"{SMALLEST}.gguf")
    code, report = doctor(env={"PYTHONPATH": str(FIXTURES / "crashing_llama"), "DELLM_CACHE_DIR": str(cache)})
    assert code == 1 and not report["can_serve"]
    [generation] = by_topic(report, "generation")
    assert generation["status"] == FAIL
    assert "crashed with signal 11 (SIGSEGV) on this CPU" in generation["text"] and "reinstall" in generation["text"]


@pytest.mark.slow
def test_doctor_without_models_says_how_to_pull(tmp_path: Path) -> None:
    code, report = doctor(env={"DELLM_CACHE_DIR": str(tmp_path)})
    assert code == 1
    assert any(f["status"] == FAIL and "dellm models pull" in f["text"] for f in by_topic(report, "model"))
    assert by_topic(report, "generation")[0]["status"] == FAIL
