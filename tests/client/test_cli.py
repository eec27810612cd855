"""``dellm``'s rough edges, each a test: default port, answer-only output, integers in JSON, fitness per
operation, quiet broken pipes, --version, and the gateway command (serving, and a busy port)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from dellm.client.cli import build_parser, main
from dellm.coordinator.convert import node_status_to_proto
from dellm.coordinator.types import NodeRecord, OpStats
from dellm.protos.wire import NodeDescription
from tests.conftest import Cluster, script

RIGHT = [{"pattern": "(?i)10% (interest )?(of|on)", "reply": "10% of $1000 is $100. Answer: 100"}]


def test_a_coordinator_without_port_gets_50050() -> None:
    args = build_parser().parse_args(["nodes", "--coordinator", "localhost"])
    assert args.coordinator == "localhost:50050"


def test_a_coordinator_with_a_bad_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["nodes", "--coordinator", "localhost:http"])
    assert exited.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "dellm.client.cli"], [sys.executable, "-m", "dellm.node.cli"],
    [sys.executable, "-m", "dellm.coordinator.cli"]], ids=["dellm", "dellm-node", "dellm-coordinator"])
def test_version_on_all_three_commands(command: list[str]) -> None:
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith(("dellm ", "dellm-node ", "dellm-coordinator ")), done


async def run_main(argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)


async def test_answer_only_prints_just_the_answer(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    await cluster.add_node("a", script(RIGHT))
    assert await run_main(["ask", "-q", "What is 10% of 1000?", "--coordinator", cluster.address]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "10% of $1000 is $100. Answer: 100"


async def test_json_keeps_integers_as_integers(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    await cluster.add_node("a", script(RIGHT))
    assert await run_main(["ask", "What is 10% of 1000?", "--coordinator", cluster.address]) == 0
    capsys.readouterr()
    assert await run_main(["nodes", "--json", "--coordinator", cluster.address]) == 0
    node = json.loads(capsys.readouterr().out.splitlines()[0])
    assert node["answers"] == 1 and node["correct"] == 1 and node["failures"] == 0  # numbers, not "1"
    assert node["operations"][0]["operation"] == "MATH_OP" and node["operations"][0]["trials"] == 1


async def test_nodes_ops_shows_fitness_per_operation(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    await cluster.add_node("mathnode", script(RIGHT))
    assert await run_main(["nodes", "--ops", "--coordinator", cluster.address]) == 0
    assert "no node has been judged" in capsys.readouterr().out
    assert await run_main(["ask", "-q", "What is 10% of 1000?", "--coordinator", cluster.address]) == 0
    capsys.readouterr()
    assert await run_main(["nodes", "--ops", "--coordinator", cluster.address]) == 0
    header, row, legend = capsys.readouterr().out.splitlines()
    assert "MATH_OP" in header and row.split()[1] == "mathnode" and "(  1)" in row and "quarantined" in legend


def test_operations_table_marks_quarantine() -> None:
    from dellm.client.render import operations_table

    record = NodeRecord(NodeDescription("n1", "x:1", name="weak"), op_stats={"MATH_OP": OpStats(0.1, 6, 0)})
    table = operations_table([node_status_to_proto(record, 0)])
    assert "0.100! (  6)" in table


async def test_a_closed_pipe_ends_quietly(cluster: Cluster) -> None:
    for name in ("a", "b", "c"):
        await cluster.add_node(name, script(RIGHT))
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` having read its line and gone: every write fails with EPIPE
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm.client.cli", "nodes", "--json", "--coordinator", cluster.address,
            stdout=write_end, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert err.decode() == "" and process.returncode == 141  # no traceback, and the status of SIGPIPE


def busy_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_gateway_on_a_busy_port_exits_2_saying_so() -> None:
    with busy_port() as holder:
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "gateway", "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr and "--listen" in done.stderr
    assert "Traceback" not in done.stderr


def test_gateway_on_an_address_not_of_this_machine_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "gateway", "--listen", "203.0.113.7:8080"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "203.0.113.7 is not an address of this machine" in done.stderr


def test_gateway_with_a_bad_listen_address_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "dellm.client.cli", "gateway", "--listen", "localhost"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--listen must be HOST:PORT" in done.stderr


async def test_gateway_command_serves_until_sigterm(cluster: Cluster) -> None:
    await cluster.add_node("a", script(RIGHT))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dellm.client.cli", "gateway", "--coordinator", cluster.address,
        "--listen", "127.0.0.1:0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line.startswith("dellm gateway listening on http://127.0.0.1:"), line
        url = line.split()[4]
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            reply = await http.post("/v1/chat/completions", json={
                "model": "dellm", "messages": [{"role": "user", "content": "What is 10% of 1000?"}]})
        assert reply.status_code == 200 and "100" in reply.json()["choices"][0]["message"]["content"]
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 30)
    assert code == 0


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("dellm.client.cli", "dellm nodes --o", "--ops"),
    ("dellm.client.cli", "dellm ask --answer", "--answer-only"),
    ("dellm.node.cli", "dellm-node --log", "--log-level"),
    ("dellm.coordinator.cli", "dellm-coordinator --conf", "--config"),
])
def test_shell_completion(tmp_path: Path, module: str, line: str, expected: str) -> None:
    """What bash asks through argcomplete (`eval "$(register-python-argcomplete dellm)"`) is answered."""
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert expected in [word.strip() for word in out.read_text(encoding="utf-8").split("\n")]
