"""How ``dellm`` shows a query's events to a person, or as JSON lines to a program.

Every string in those events came from the network (a node's answer, name or error, the coordinator's
plan), so none reaches a terminal as it is: :func:`terminal_safe` strips escape sequences and control
characters first. JSON lines keep every string exact (JSON escapes what a terminal would act on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, TextIO

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from dellm.protos import dellm_pb2

# An escape sequence whole, so that no remnant of it is shown: a string (OSC, DCS, SOS, PM, APC) up to its
# terminator (BEL or ST) or the end of the text; a control sequence (CSI); any other ESC sequence. Both the
# 7-bit (ESC x) and the 8-bit (C1) introducers. Whatever this misses is made harmless by _CONTROLS below.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # strings
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: parameters, intermediates, final byte
    r"|\x1b[ -/]*[0-~]?"  # other ESC sequences (charset selection, keypad modes, RIS ...)
)
# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides and isolates (they
# reorder what follows them on the screen, so a line could show other than what it says).
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # what json.dumps leaves raw


def terminal_safe(text: str, *, newlines: bool = False) -> str:
    """``text`` as it may be written to a terminal: escape sequences and control characters removed
    (carriage return and backspace included: they overwrite what was shown). With ``newlines`` (a
    text's body, like the answer), newline and tab are kept; without, each becomes a space, so that a
    name or an error stays on its own line and cannot fake another."""
    text = _CONTROLS.sub("", _ESCAPE_SEQUENCE.sub("", text))
    return text if newlines else text.replace("\n", " ").replace("\t", " ")


_INT64_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64})


def message_dict(message: Message, *, defaults: bool = False) -> dict[str, Any]:
    """A message as JSON-ready data, field names as in the proto. Unlike protobuf's own JSON mapping,
    64-bit integers stay numbers (``"correct": 1``, not ``"correct": "1"``); ``defaults`` keeps fields
    at their default value."""
    data = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=defaults)
    _numbers(message.DESCRIPTOR, data)
    return data


def _numbers(descriptor: Descriptor, data: dict[str, Any]) -> None:
    for field in descriptor.fields:
        value = data.get(field.name)
        if value is None:
            continue
        if field.type in _INT64_TYPES:
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    _numbers(field.message_type, item)


def event_json(event: dellm_pb2.AskEvent) -> str:
    """One event as a JSON line: every string exact once parsed, integers as numbers, and no raw control
    character in the line (json.dumps escapes C0 itself; C1 and the bidirectional controls are escaped
    here the same way)."""
    line = json.dumps(message_dict(event), ensure_ascii=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def short(node_id: str) -> str:
    return terminal_safe(node_id)[:8]


class ProgressPrinter:
    """Renders live progress: the plan, assignments, tokens per node, consensus, the answer.

    Everything goes out through ``_line`` and ``_stream``, which pass it through :func:`terminal_safe`:
    whatever field an event gains, no node or network string reaches the terminal raw.
    """

    def __init__(self, out: TextIO, names: Mapping[str, str] | None = None) -> None:
        self._out = out
        self._names = dict(names or {})
        self._stream_owner: tuple[str, str] | None = None
        self._live_node: dict[str, str] = {}  # chunk id -> the node whose tokens are shown live
        self._in_answer = False

    def _label(self, node_id: str) -> str:
        name = self._names.get(node_id)
        return f"{short(node_id)} ({name})" if name else short(node_id)

    def _line(self, text: str = "") -> None:
        if self._stream_owner is not None or self._in_answer:
            self._out.write("\n")
            self._stream_owner = None
            self._in_answer = False
        self._out.write(terminal_safe(text) + "\n")
        self._out.flush()

    def _stream(self, text: str, *, newlines: bool = False) -> None:
        """Write streamed text where the cursor is (no line of its own)."""
        self._out.write(terminal_safe(text, newlines=newlines))
        self._out.flush()

    def show(self, event: dellm_pb2.AskEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "plan":
            self._line(f"plan for query {event.plan.query_id}:")
            for c in event.plan.chunks:
                after = f", after {', '.join(c.depends_on)}" if c.depends_on else ""
                op = dellm_pb2.Operation.Name(c.operation)
                self._line(f"  {c.chunk_id} {op:<11} {terminal_safe(c.text)!r} (complexity {c.complexity:.2f}{after})")
        elif kind == "assignment":
            a = event.assignment
            nodes = ", ".join(self._label(n) for n in a.node_ids)
            self._line(f"{a.chunk_id} -> {nodes}" + (f"  [retry: {a.reason}]" if a.retry else ""))
        elif kind == "chunk_token":
            t = event.chunk_token
            # Redundant nodes stream at once; show one live, the others in the vote summary.
            if self._live_node.setdefault(t.chunk_id, t.node_id) != t.node_id:
                return
            owner = (t.chunk_id, t.node_id)
            if owner != self._stream_owner:
                if self._stream_owner is not None or self._in_answer:
                    self._out.write("\n")
                self._stream(f"  [{t.chunk_id} @ {short(t.node_id)}] ")
                self._stream_owner = owner
                self._in_answer = False
            self._stream(t.text)  # a chunk's tokens stay on its one line: newlines become spaces
        elif kind == "chunk_result":
            r = event.chunk_result
            valid = [v for v in r.votes if not v.failed]
            if r.unanimous:
                consensus = "unanimous"
            elif len(valid) <= 1:
                consensus = "single answer, nothing to compare"
            else:
                consensus = f"{r.groups} different answers"
            source = ("computed by the coordinator (no node's answer matched its exact value)"
                      if r.checked_by == "coordinator" else f"from {self._label(r.winner_node_id)}")
            checked = " [checked exactly]" if r.checked_by == "exact_check" else ""
            self._line(f"{r.chunk_id} result {source}: {' '.join(terminal_safe(r.answer).split())!r}{checked}")
            for v in r.votes:
                what = f"failed: {v.error}" if v.failed else f"{v.normalized} (weight {v.weight:.2f})"
                if v.program and not v.failed and v.program != "no program":
                    what += f"; {v.program}"
                self._line(f"   vote {self._label(v.node_id)}: {what}, {v.latency_ms / 1000:.2f} s")
            for node_id in r.cancelled_node_ids:
                self._line(f"   cancelled {self._label(node_id)}: the chunk was settled before it finished")
            self._line(f"   consensus: {consensus}, agreement {r.agreement:.0%} over {len(valid)} answer(s)")
        elif kind == "answer_token":
            if not self._in_answer:
                self._line("answer:")
                self._in_answer = True
            self._stream(event.answer_token.text, newlines=True)
        elif kind == "final":
            f = event.final
            self._line()
            timings = ", ".join(f"{t.stage} {t.ms:.0f} ms" for t in f.timings)
            self._line(f"query {f.query_id} answered in {f.total_ms / 1000:.2f} s (synthesis: {f.synthesis}; "
                       f"{timings})")
            for r in f.rewards:
                verdict = dellm_pb2.Verdict.Name(r.verdict).replace("VERDICT_UNSPECIFIED", "no verdict")
                self._line(f"  reward {r.chunk_id} {self._label(r.node_id)}: {verdict} ({r.source}) "
                           f"{r.reward:+.3f}, fitness {r.fitness_before:.3f} -> {r.fitness_after:.3f}")


def nodes_table(nodes: list[dellm_pb2.NodeStatus], now: float) -> str:
    header = f"{'NODE':<10} {'NAME':<16} {'ADDRESS':<22} {'MODEL':<30} {'STATE':<5} {'FITNESS':>7} " \
             f"{'LATENCY':>9} {'INFLIGHT':>8} {'LAST SEEN':>10}"
    rows = [header]
    for n in nodes:
        seen = f"{now - n.last_seen_unix:.0f}s ago" if n.last_seen_unix else "never"
        latency = f"{n.latency_ms:.0f} ms" if n.latency_ms else "-"
        info = n.info  # as the nodes described themselves: made terminal-safe before it is cut to width
        name, address, state = terminal_safe(info.name), terminal_safe(info.address), terminal_safe(n.state)
        model = terminal_safe(f"{info.model} {info.backend}")
        rows.append(f"{short(info.node_id):<10} {name[:16]:<16} {address:<22} "
                    f"{model[:30]:<30} {state:<5} {n.fitness:>7.3f} "
                    f"{latency:>9} {n.in_flight:>8} {seen:>10}")
    return "\n".join(rows)


def operations_table(nodes: list[dellm_pb2.NodeStatus]) -> str:
    """Fitness for each kind of work (``dellm nodes --ops``): one column per operation any node was judged at,
    ``-`` where a node was not, ``!`` after a fitness the coordinator quarantines the node for."""
    ops = sorted({op.operation for n in nodes for op in n.operations})
    names = [dellm_pb2.Operation.Name(op) for op in ops]
    header = f"{'NODE':<10} {'NAME':<16} {'OVERALL':>7} " + " ".join(f"{name:>14}" for name in names)
    rows = [header.rstrip()]
    for n in nodes:
        by_op = {op.operation: op for op in n.operations}
        cells = []
        for op in ops:
            status = by_op.get(op)
            cells.append(f"{'-':>14}" if status is None else
                         f"{status.fitness:.3f}{'!' if status.quarantined else ' '} ({status.trials:>3})".rjust(14))
        rows.append(f"{short(n.info.node_id):<10} {terminal_safe(n.info.name)[:16]:<16} {n.fitness:>7.3f} "
                    + " ".join(cells))
    rows.append("(judged answers in brackets; ! quarantined from that work)" if ops else
                "no node has been judged at any operation yet")
    return "\n".join(rows)
