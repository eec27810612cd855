"""scripts/bench_gateway.py on real processes, briefly: the figures it reports and the screenshot it takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.gateway.tools import chromium
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_a_short_run_reports_both_paths_and_a_screenshot(tmp_path: Path) -> None:
    chromium()
    out, shot = tmp_path / "gateway.json", tmp_path / "status.png"
    done = subprocess.run([sys.executable, "scripts/bench_gateway.py", "--rounds", "10", "--teach", "10",
                           "--out", str(out), "--screenshot", str(shot)],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert "error" not in report and len(report["samples_ms"]["http"]) == 10
    assert report["grpc_ms"]["p50"] > 0 and report["http_ms"]["p50"] > 0 and "gateway_added_ms" in report
    assert shot.read_bytes()[:4] == b"\x89PNG" and "added by the gateway" in done.stdout
