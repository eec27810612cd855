"""How ``dellm`` shows a query's events to a person, or as JSON lines to a program."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TextIO

from google.protobuf.json_format import MessageToDict

from dellm.protos import dellm_pb2


def event_json(event: dellm_pb2.AskEvent) -> str:
    return json.dumps(MessageToDict(event, preserving_proto_field_name=True), ensure_ascii=False)


def short(node_id: str) -> str:
    return node_id[:8]


class ProgressPrinter:
    """Renders live progress: the plan, assignments, tokens per node, consensus, the answer."""

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
        self._out.write(text + "\n")
        self._out.flush()

    def show(self, event: dellm_pb2.AskEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "plan":
            self._line(f"plan for query {event.plan.query_id}:")
            for c in event.plan.chunks:
                after = f", after {', '.join(c.depends_on)}" if c.depends_on else ""
                op = dellm_pb2.Operation.Name(c.operation)
                self._line(f"  {c.chunk_id} {op:<11} {c.text!r} (complexity {c.complexity:.2f}{after})")
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
                self._out.write(f"  [{t.chunk_id} @ {short(t.node_id)}] ")
                self._stream_owner = owner
                self._in_answer = False
            self._out.write(t.text.replace("\n", " "))
            self._out.flush()
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
            self._line(f"{r.chunk_id} result {source}: {' '.join(r.answer.split())!r}{checked}")
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
            self._out.write(event.answer_token.text)
            self._out.flush()
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
        rows.append(f"{short(n.info.node_id):<10} {n.info.name[:16]:<16} {n.info.address:<22} "
                    f"{(n.info.model + ' ' + n.info.backend)[:30]:<30} {n.state:<5} {n.fitness:>7.3f} "
                    f"{latency:>9} {n.in_flight:>8} {seen:>10}")
    return "\n".join(rows)
