"""Startup with bad names and bad state files, as real processes: `dellm-node` and `dellm-coordinator` refuse
each with one line that names the problem and the fix, and exit 2; nothing is replaced or written elsewhere."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dellm.client.netns import in_private_netns, netns_unavailable_reason
from dellm.coordinator.registry.sqlite import SqliteRegistry
from dellm.protos.wire import NodeDescription
from tests.conftest import FIXTURES, REPO

pytestmark = pytest.mark.slow
SCRIPTED = ("--backend", "scripted", "--script", str(FIXTURES / "good.toml"), "--listen", "127.0.0.1:0")
COORDINATOR = ("--synth-model", "none", "--discovery", "none", "--listen", "127.0.0.1:0", "--canary-interval", "0")
GOOD_ID = "0123456789abcdef0123456789abcdef"


def run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def node(*args: str, netns: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "dellm.node.cli", *SCRIPTED, *args]
    return in_private_netns(argv) if netns else argv


def coordinator(*args: str) -> list[str]:
    return [sys.executable, "-m", "dellm.coordinator.cli", *COORDINATOR, *args]


def refused(done: subprocess.CompletedProcess[str], program: str, *, logs: bool = False) -> str:
    """The one line a refused start printed: nothing else (no traceback), but with ``logs`` the log lines
    of what ran before the refusal (loading the model)."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    if logs:
        lines = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) ", line)]
    assert len(lines) == 1 and lines[0].startswith(f"{program}: "), done.stderr
    return lines[0]


@contextmanager
def serving(argv: list[str], ready: str) -> Iterator[str]:
    """Start ``argv``, wait for its readiness line (containing ``ready``), and yield it; SIGTERM at the end.
    (The readiness line is printed just before the SIGTERM handler is installed: killed by the signal or
    drained by its handler, either ends a process that did start.)"""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert ready in line, f"{line!r}; stderr: {process.stderr.read() if process.poll() is not None else ''}"
        yield line
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if process.poll() is None:
                process.kill()


def needs_netns() -> None:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"mDNS must stay on this machine and no private network namespace can be made: {reason}")


# --- dellm-node --name ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["n" * 49, "n" * 60, "x" * 10_000, "..", ".", ".hidden", "a/b", "../up", "/abs", "", "two words", "tab\tname",
     "line\nbreak", "ünïcode"],
    ids=["49-chars", "60-chars", "10KB", "dot-dot", "dot", "leading-dot", "slash", "parent", "absolute", "empty",
         "space", "tab", "newline", "non-ascii"],
)
def test_an_invalid_node_name_is_refused_in_one_line(tmp_path: Path, name: str) -> None:
    state = tmp_path / "state"
    line = refused(run(node("--no-advertise", "--state-dir", str(state), "--name", name)), "dellm-node")
    assert line.startswith("dellm-node: --name: node name ") and "1-48 letters, digits" in line
    assert len(line) < 300  # a 10 KB name is not echoed whole
    assert not state.exists() or not any(state.rglob("*"))  # nothing written, least of all above nodes/


def test_a_name_past_the_mdns_limit_is_refused_before_advertising(tmp_path: Path) -> None:
    """Advertising on (the default): a 60-character name used to crash zeroconf (BadTypeInNameException)."""
    needs_netns()
    line = refused(run(node("--state-dir", str(tmp_path), "--name", "n" * 60, netns=True)), "dellm-node")
    assert "(60 characters) is not valid" in line


def test_the_longest_valid_name_is_advertised_over_mdns(tmp_path: Path) -> None:
    needs_netns()
    with serving(node("--state-dir", str(tmp_path), "--name", "n" * 48, netns=True), "serving") as line:
        assert "dellm-node " in line
    assert (tmp_path / "nodes" / ("n" * 48) / "node_id").is_file()


def test_a_model_name_too_long_to_advertise_is_refused(tmp_path: Path) -> None:
    """A 300-character model name used to raise ValueError from zeroconf's TXT record."""
    needs_netns()
    script = tmp_path / "long-model.toml"  # the scripted backend's model name is its script's
    script.write_text((FIXTURES / "good.toml").read_text().replace('model = "scripted-good"', f'model = "{"m" * 300}"'))
    line = refused(run(node("--state-dir", str(tmp_path), "--name", "good", "--script", str(script), netns=True)),
                   "dellm-node", logs=True)
    assert "is 300 bytes; mDNS advertises at most 249" in line and "--no-advertise" in line


# --- dellm-node's node_id file ----------------------------------------------------------------------------


def write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


@pytest.mark.parametrize(
    "corrupt",
    [write_bytes(b"garbage\n"), write_bytes(b""), write_bytes(GOOD_ID[:31].encode()), write_bytes(b"\xff\xfe\x00\x01"),
     write_bytes(GOOD_ID.upper().encode()), write_bytes((GOOD_ID + GOOD_ID).encode()), lambda path: path.mkdir()],
    ids=["garbage", "empty", "short", "not-utf8", "upper-case", "doubled", "a-folder"],
)
def test_a_corrupt_node_id_file_is_refused_never_replaced(tmp_path: Path, corrupt: Callable[[Path], None]) -> None:
    path = tmp_path / "nodes" / "good" / "node_id"
    path.parent.mkdir(parents=True)
    corrupt(path)
    before = path.read_bytes() if path.is_file() else None
    line = refused(run(node("--no-advertise", "--state-dir", str(tmp_path), "--name", "good")), "dellm-node")
    assert str(path) in line and "delete it to start this node over with a new id" in line
    assert (path.read_bytes() if path.is_file() else None) == before  # left as it was, for the user to judge
    assert sorted(p.name for p in path.parent.iterdir()) == ["node_id"]


def test_a_good_node_id_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "nodes" / "good" / "node_id"
    path.parent.mkdir(parents=True)
    path.write_text(GOOD_ID + "\n", encoding="utf-8")
    with serving(node("--no-advertise", "--state-dir", str(tmp_path), "--name", "good"), "serving") as line:
        assert line.startswith(f"dellm-node {GOOD_ID} serving")
    assert path.read_text(encoding="utf-8") == GOOD_ID + "\n"


# --- dellm-coordinator --registry -------------------------------------------------------------------------


def real_registry(path: Path, nodes: int = 200) -> None:
    registry = SqliteRegistry(path)
    for i in range(nodes):
        registry.upsert_node(NodeDescription(node_id=f"{i:032x}", name=f"n{i}", address="127.0.0.1:1",
                                             model="m" * 100), now=time.time())
    registry.close()


def truncated(path: Path) -> None:
    real_registry(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
        db.execute("INSERT INTO photos (path) VALUES ('holiday.jpg')")
    db.close()


def foreign_columns(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE nodes (id INTEGER PRIMARY KEY, hostname TEXT)")
    db.close()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (write_bytes(os.urandom(8192)), "is not an SQLite database"),
        (write_bytes(b"SQLite format 3\x00" + b"\x00" * 84), "is not an SQLite database"),  # a header, cut short
        (truncated, "is damaged (database disk image is malformed): restore it from a backup"),
        (foreign, "is another program's database (tables photos), not a DELLM registry"),
        (foreign_columns, "has a nodes table without the columns"),
        (lambda path: path.mkdir(), "is a folder, not a file"),
        (write_bytes(b""), "is empty (0 bytes)"),
    ],
    ids=["corrupt", "header-only", "truncated", "foreign-schema", "foreign-columns", "directory", "zero-bytes"],
)
def test_a_registry_file_that_cannot_be_the_registry_is_refused_in_one_line(
    tmp_path: Path, make: Callable[[Path], None], says: str,
) -> None:
    path = tmp_path / "coordinator.sqlite3"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    line = refused(run(coordinator("--registry", str(path))), "dellm-coordinator")
    assert line.startswith(f"dellm-coordinator: registry {path} ") and says in line
    assert any(fix in line for fix in ("give another path", "give a file path", "delete it", "move it away"))
    assert (path.read_bytes() if path.is_file() else None) == before  # nothing written into it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coordinator.sqlite3"]  # no -wal, no -shm


def test_a_registry_under_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a folder")
    line = refused(run(coordinator("--registry", str(tmp_path / "state" / "coordinator.sqlite3"))),
                   "dellm-coordinator")
    assert str(tmp_path / "state") in line and "is not a folder" in line and "--registry" in line


def test_a_new_registry_and_a_good_one_start(tmp_path: Path) -> None:
    path = tmp_path / "new" / "coordinator.sqlite3"
    with serving(coordinator("--registry", str(path)), "listening on"):
        assert path.stat().st_size > 0
    with serving(coordinator("--registry", str(path)), "listening on"):  # its own file, reopened
        pass
    real_registry(tmp_path / "used.sqlite3", nodes=3)
    with serving(coordinator("--registry", str(tmp_path / "used.sqlite3")), "listening on"):
        pass
    reopened = SqliteRegistry(tmp_path / "used.sqlite3")
    assert len(reopened.list_nodes()) == 3
    reopened.close()
