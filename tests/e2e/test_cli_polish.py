"""Rough edges of the commands as real processes: a busy port is refused (SO_REUSEPORT off) with exit 2,
and a second node with the same name is refused at once, suggesting --name."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_startup_errors import coordinator, node, refused, run, serving

pytestmark = pytest.mark.slow


def test_a_second_coordinator_on_a_busy_port_exits_2(tmp_path: Path) -> None:
    with serving(coordinator("--registry", str(tmp_path / "one.sqlite3")), "listening on") as line:
        address = line.split()[-1]
        again = [a if a != "127.0.0.1:0" else address for a in coordinator("--registry", str(tmp_path / "two.sqlite3"))]
        line = refused(run(again), "dellm-coordinator", logs=True)
    assert f"could not listen on {address}: the port is in use" in line and "--listen" in line


def test_a_node_on_a_busy_port_exits_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0), reuse_port=False) as holder:
        port = holder.getsockname()[1]
        argv = [a if a != "127.0.0.1:0" else f"127.0.0.1:{port}"
                for a in node("--no-advertise", "--state-dir", str(tmp_path), "--name", "n1")]
        done = run(argv)
    assert done.returncode == 2, done
    assert "port is in use" in done.stderr and "Traceback" not in done.stderr


def test_a_second_node_with_the_same_name_is_refused_suggesting_name(tmp_path: Path) -> None:
    with serving(node("--no-advertise", "--state-dir", str(tmp_path), "--name", "twin"), "serving"):
        line = refused(run(node("--no-advertise", "--state-dir", str(tmp_path), "--name", "twin")), "dellm-node")
    assert "already running as 'twin'" in line and "--name" in line


def test_dellm_node_help_mentions_train() -> None:
    done = subprocess.run([sys.executable, "-m", "dellm.node.cli", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and "dellm-node train" in done.stdout
