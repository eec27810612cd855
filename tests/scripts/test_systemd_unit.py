"""scripts/dellm-node.service is a valid systemd unit (``systemd-analyze verify``) that starts dellm-node
with a config file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "scripts" / "dellm-node.service"


def test_unit_runs_dellm_node_with_its_config_file() -> None:
    text = UNIT.read_text(encoding="utf-8")
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[0].endswith("/dellm-node") and "--config /etc/dellm/node.toml" in text
    assert "RestartPreventExitStatus=2" in text and "KillSignal=SIGTERM" in text


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that ExecStart's program exists: point it at this Python for the check
    unit = tmp_path / "dellm-node.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/dellm/.venv/bin/dellm-node", sys.executable),
                    encoding="utf-8")
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if str(unit) in line or "dellm-node.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
