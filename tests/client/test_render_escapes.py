"""Terminal escape injection: what nodes and the network send is made terminal-safe before `dellm` prints
it, and `--json` keeps it exact. Real sequences, through the printer, the table, and the CLI over real gRPC."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator

import pytest
from google.protobuf.json_format import MessageToDict

from dellm.client.cli import main
from dellm.client.render import ProgressPrinter, event_json, nodes_table, terminal_safe
from dellm.node.backends.base import BackendDescription, BackendError, GenerationRequest, TokenPiece
from dellm.node.config import NodeConfig
from dellm.node.daemon import node_info, start_node
from dellm.node.state import FeedbackStore
from dellm.protos import dellm_pb2
from tests.conftest import Cluster

TITLE = "\x1b]0;pwned\x07"  # OSC 0: sets the window title, ended by BEL
TITLE_ST = "\x1b]2;pwned\x1b\\"  # the same, ended by ST
CLEAR = "\x1b[2J\x1b[H"  # clear the screen, cursor home
RED = "\x1b[31m"  # SGR: red from here on
CSI8 = "\x9b2J"  # 8-bit CSI: clear the screen where C1 is honoured
HYPERLINK = "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"
OVERWRITE = "Paris\rLyon"  # carriage return: the line is overwritten
BACKSPACE = "Paris\x08\x08\x08\x08\x08Lyon"
BIDI = "\u202eecnarF"  # right-to-left override: shown reversed
NASTY = (TITLE, TITLE_ST, CLEAR, RED, CSI8, HYPERLINK, OVERWRITE, BACKSPACE, BIDI)

# Nothing a terminal acts on: ESC, the C0 and C1 controls (but newline and tab), DEL, the bidi overrides.
FORBIDDEN = {chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), *range(0x7f, 0xa0))} | {
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def raw_controls(text: str) -> set[str]:
    return {ch for ch in text if ch in FORBIDDEN}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"{TITLE}Paris", "Paris"),
        (f"Par{TITLE_ST}is", "Paris"),
        (f"{CLEAR}Paris", "Paris"),
        (f"{RED}Paris\x1b[0m", "Paris"),
        (f"{CSI8}Paris", "Paris"),
        (f"{HYPERLINK} Paris", "click Paris"),
        (OVERWRITE, "ParisLyon"),
        (BACKSPACE, "ParisLyon"),
        (BIDI, "ecnarF"),
        ("\x1b]0;never ended", ""),  # an unterminated string swallows the rest, as a terminal would
        ("\x1b[31", ""),  # a control sequence cut off mid-way
        ("a\x1bcb", "ab"),  # ESC c: reset the terminal
        ("a\x00b\x07c\x7fd\x85e", "abcde"),
        ("Paris is in France. Лион — 里昂 🙂", "Paris is in France. Лион — 里昂 🙂"),
    ],
    ids=["osc-bel", "osc-st", "clear", "sgr", "csi-8bit", "hyperlink", "carriage-return", "backspace", "bidi",
         "unterminated-osc", "cut-csi", "esc-c", "c0-del-c1", "plain-unicode"],
)
def test_terminal_safe_strips_sequences_and_controls(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_terminal_safe_keeps_lines_only_when_asked() -> None:
    assert terminal_safe("one\ntwo\tthree\r\n") == "one two three "
    assert terminal_safe("one\ntwo\tthree\r\n", newlines=True) == "one\ntwo\tthree\n"


def nasty(label: str) -> str:
    """Every sequence, around a visible label."""
    return "".join(NASTY) + label + RED


def events() -> list[dellm_pb2.AskEvent]:
    """A whole query's events, every string field the printer shows carrying real sequences."""
    node = nasty("node-a")
    return [
        dellm_pb2.AskEvent(plan=dellm_pb2.PlanEvent(query_id=nasty("q1"), chunks=[dellm_pb2.PlannedChunk(
            chunk_id=nasty("c1"), operation=dellm_pb2.SEARCH_OP, text=nasty("Tell me about Paris"),
            complexity=0.5, depends_on=[nasty("c0")])])),
        dellm_pb2.AskEvent(assignment=dellm_pb2.AssignmentEvent(chunk_id="c1", node_ids=[node], retry=True,
                                                                reason=nasty("node-b failed"))),
        dellm_pb2.AskEvent(chunk_token=dellm_pb2.ChunkTokenEvent(chunk_id="c1", node_id=node, text=nasty("tok"))),
        dellm_pb2.AskEvent(chunk_result=dellm_pb2.ChunkResultEvent(
            chunk_id="c1", answer=nasty("Paris is in France"), winner_node_id=node, groups=2,
            votes=[dellm_pb2.Vote(node_id=node, normalized=nasty("norm"), program=nasty("program ran"),
                                  weight=0.5),
                   dellm_pb2.Vote(node_id=nasty("node-b"), failed=True, error=nasty("INTERNAL: boom"))],
            cancelled_node_ids=[nasty("node-c")])),
        dellm_pb2.AskEvent(answer_token=dellm_pb2.AnswerTokenEvent(text=nasty("Paris\nis in France"))),
        dellm_pb2.AskEvent(final=dellm_pb2.FinalEvent(
            query_id=nasty("q1"), answer=nasty("Paris"), synthesis=nasty("template"),
            timings=[dellm_pb2.StageTiming(stage=nasty("decompose"), ms=1.0)],
            rewards=[dellm_pb2.NodeReward(node_id=node, chunk_id=nasty("c1"), verdict=dellm_pb2.WRONG,
                                          source=nasty("failure"), reward=-0.05)])),
    ]


def test_progress_printer_shows_no_sequence_of_any_event() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, names={nasty("node-a"): nasty("laptop")})
    for event in events():
        printer.show(event)
    shown = out.getvalue()
    assert raw_controls(shown) == set()
    assert "pwned" not in shown and "evil.example" not in shown  # the strings' bodies go with them
    for visible in ("q1", "Tell me about Paris", "node-b failed", "tok", "Paris is in France", "INTERNAL: boom",
                    "norm", "program ran", "cancelled", "laptop", "decompose", "failure", "ParisLyon"):
        assert visible in shown, visible
    assert "Paris\nis in France" in shown  # the answer keeps its own lines


def test_nodes_table_shows_no_sequence_and_keeps_its_columns() -> None:
    def hidden(label: str) -> str:  # sequences that leave nothing visible
        return f"{TITLE}{CLEAR}{CSI8}{label}{RED}\x1b[0m"

    status = dellm_pb2.NodeStatus(
        info=dellm_pb2.NodeInfo(node_id=f"{RED}abc{CLEAR}defgh", name=hidden("laptop"), address=hidden("10.0.0.1:5"),
                                model=hidden("qwen"), backend=hidden("llama")),
        state=hidden("up"), fitness=0.5)
    clean = dellm_pb2.NodeStatus(info=dellm_pb2.NodeInfo(node_id="abcdefgh", name="laptop", address="10.0.0.1:5",
                                                         model="qwen", backend="llama"), state="up", fitness=0.5)
    table = nodes_table([status, clean], now=0.0)
    assert raw_controls(table) == set() and "pwned" not in table
    _, evil, honest = table.splitlines()
    assert evil == honest  # the sequences are gone, and took no columns
    long = dellm_pb2.NodeStatus(info=dellm_pb2.NodeInfo(node_id="x" * 32, name=nasty("laptop"), model=nasty("qwen")))
    assert raw_controls(nodes_table([long], now=0.0)) == set()


@pytest.mark.parametrize("event", events(), ids=lambda e: e.WhichOneof("event"))
def test_event_json_keeps_every_string_exact_and_no_raw_control(event: dellm_pb2.AskEvent) -> None:
    line = event_json(event)
    assert json.loads(line) == MessageToDict(event, preserving_proto_field_name=True)
    assert "\n" not in line and raw_controls(line) == set()  # JSON escapes them: \u001b, \u009b ...


# --- through the CLI, over real gRPC --------------------------------------------------------------------


class NastyBackend:
    """Test double: a node whose model name and answers carry escape sequences, or (``fail``) whose
    generation fails with an error that carries them."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail

    def describe(self) -> BackendDescription:
        return BackendDescription(backend="scripted", model=f"qwen{CLEAR}{TITLE}")

    def generate(self, request: GenerationRequest, cancel: threading.Event) -> Iterator[TokenPiece]:
        if self.fail:
            raise BackendError(f"{TITLE}{CLEAR}out of memory{RED}")
        for word in (TITLE, "Paris ", CLEAR, "is ", CSI8, "the ", "capital\r", "\x08of ", RED, "France."):
            yield TokenPiece(word, (-0.05,))
        yield TokenPiece("", finish_reason="stop")

    def close(self) -> None:
        return None


async def add_nasty_node(cluster: Cluster, node_id: str, name: str, backend: NastyBackend) -> None:
    """A real node with a clean id and a nasty name, joined to ``cluster`` (stopped with it)."""
    config = NodeConfig(listen="127.0.0.1:0", name=name, state_dir=cluster.tmp / "state", drain_grace_s=1.0,
                        coordinator=cluster.address, advertise=False)
    store = cluster.stores[node_id] = FeedbackStore(cluster.tmp / f"{node_id}.sqlite3")
    cluster.nodes[node_id] = await start_node(backend, node_info(node_id, name, backend), store, config)
    assert cluster.coordinator is not None
    registry = cluster.coordinator.coordinator.registry
    await cluster.wait_for(lambda: any(n.node_id == node_id and n.state == "up" for n in registry.list_nodes()))


async def dellm(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``dellm ARGS`` in this process (in a thread: it runs its own event loop); exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_dellm_ask_and_nodes_print_nothing_a_node_sent_raw(
    cluster: Cluster, capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"laptop{TITLE}{CLEAR}"
    await add_nasty_node(cluster, "nasty".ljust(32, "0"), name, NastyBackend())
    query = f"Tell me about Paris{RED}"
    code, out, err = await dellm(capsys, "ask", query, "--coordinator", cluster.address)
    assert code == 0, err
    # (the vote's normalized form is the coordinator's: plain words, "0 pwned paris ...", nothing to act on)
    assert raw_controls(out + err) == set()
    assert "Paris is the capitalof France." in out and "laptop" in out

    code, out, _ = await dellm(capsys, "ask", query, "--json", "--coordinator", cluster.address)
    assert code == 0 and raw_controls(out.replace("\n", "")) == set()
    lines = [json.loads(line) for line in out.splitlines()]
    tokens = "".join(e["chunk_token"]["text"] for e in lines if "chunk_token" in e)
    assert tokens == f"{TITLE}Paris {CLEAR}is {CSI8}the capital\r\x08of {RED}France."  # exact
    assert lines[0]["plan"]["chunks"][0]["text"] == query

    code, out, _ = await dellm(capsys, "nodes", "--coordinator", cluster.address)
    assert code == 0 and raw_controls(out) == set() and "pwned" not in out
    assert "laptop" in out and "qwen" in out

    code, out, _ = await dellm(capsys, "nodes", "--json", "--coordinator", cluster.address)
    listed = json.loads(out)
    assert listed["info"]["name"] == name and listed["info"]["model"] == f"qwen{CLEAR}{TITLE}"  # exact


async def test_an_error_from_a_node_is_printed_terminal_safe(
    cluster: Cluster, capsys: pytest.CaptureFixture[str],
) -> None:
    await add_nasty_node(cluster, "failing".ljust(32, "0"), "failing", NastyBackend(fail=True))
    code, out, err = await dellm(capsys, "ask", "Tell me about Paris", "--coordinator", cluster.address)
    assert code == 3  # UNAVAILABLE: no node could answer
    assert "out of memory" in err and err.count("\n") == 1  # one line, however many the node's error had
    assert raw_controls(out + err) == set() and "pwned" not in err
