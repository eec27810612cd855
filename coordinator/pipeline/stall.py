"""Slow and silent nodes: when a node's stream counts as stalled, judged while it streams.

A node that sends one byte a second, or nothing at all, held every query it was on for the whole
answer deadline (60 s, 20 s before a first token) while another node had answered in 0.2 s. A
stream is now cut as *stalled* when, at any check (every ``check_s``):

- it has sent nothing for longer than its idle limit. From its own history: ``idle_factor`` x its usual
  answer time (times the requests it holds, this one included: a node serves one at a time, so a node
  busy with another chunk waits its turn, dispatch.usual_wait_ms), ``idle_min_s`` at least
  (``first_token_timeout_s`` still bounds a node never measured). Once another node on the chunk has
  answered: ``idle_factor`` x that answer's time, ``after_answer_min_s`` at least, but never less than
  the node's own usual answer time (a bigger, slower model is not cut for being slower than a small
  one), and never more than its own limit;
- after ``rate_window_s`` of streaming, its token rate is under the floor: ``min_rate`` tokens a
  second, or once another node has answered, ``rate_fraction`` of that node's rate if higher.

So a node that stalls while another has already answered is cut within about
``after_answer_min_s`` (or its own usual time), and a node merely slower than the others but
streaming steadily is not.
A stalled answer fails with an error starting ``stalled:``, and is penalised more than a wrong
answer (coordinator/core.py applies ``extra_penalties`` more wrong-answer updates to its fitness).

``DispatchConfig.stall`` holds the settings; ``StallWatch.guard`` wraps one node's stream read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from dellm.coordinator.config import StallConfig
from dellm.coordinator.types import NodeAnswer

STALLED = "stalled:"  # how a stalled answer's error starts


def is_stalled(error: str | None) -> bool:
    return bool(error) and str(error).startswith(STALLED)


class StreamProgress(Protocol):
    """What a stream has sent so far (dispatch's ``_Received``)."""

    started: float  # time.perf_counter() at the call
    last_piece_at: float
    pieces: int
    logprobs: list[float]

    @property
    def first_token_at(self) -> float | None: ...


def _rate(answer: NodeAnswer) -> float:
    seconds = max(answer.latency_ms / 1000, 1e-3)
    return max(answer.tokens, 1) / seconds


def stall_reason(progress: StreamProgress, usual_ms: float | None, others: Sequence[NodeAnswer],
                 config: StallConfig, now: float) -> str | None:
    """Why the stream of ``progress`` counts as stalled at ``now`` (time.perf_counter()), or None.

    ``usual_ms``: the node's usual whole-answer time (its history), None when never measured;
    ``others``: the answers already in for the same chunk (failed ones are not evidence)."""
    answered = [a for a in others if not a.failed and a.text.strip()]
    idle = now - max(progress.started, progress.last_piece_at)
    usual_s = usual_ms / 1000 if usual_ms else None
    limit = max(config.idle_min_s, config.idle_factor * usual_s) if usual_s else None
    if answered:
        fastest = min(a.latency_ms for a in answered) / 1000
        after = max(config.after_answer_min_s, config.idle_factor * fastest, usual_s or 0.0)
        limit = after if limit is None else min(limit, after)
    if limit is not None and idle > limit:
        what = "no first token" if progress.first_token_at is None else "no token"
        since = " after another node answered" if answered else ""
        return f"{STALLED} {what} for {idle:.1f}s{since} (limit {limit:.1f}s)"
    if progress.first_token_at is None:
        return None
    streaming = now - progress.first_token_at
    if streaming < config.rate_window_s:
        return None
    floor = config.min_rate
    if answered:
        floor = max(floor, config.rate_fraction * max(_rate(a) for a in answered))
    rate = (len(progress.logprobs) or progress.pieces) / streaming
    if rate < floor:
        return f"{STALLED} {rate:.1f} tokens/s, under the floor of {floor:.1f}"
    return None


class StallWatch:
    """Watches one node's stream on one chunk: ``usual_ms`` is the node's history, ``others()`` the
    answers in for the chunk so far."""

    def __init__(self, config: StallConfig, usual_ms: float | None,
                 others: Callable[[], Sequence[NodeAnswer]]) -> None:
        self._config = config
        self._usual_ms = usual_ms
        self._others = others

    async def guard(self, reading: Coroutine[Any, Any, None], progress: StreamProgress) -> str | None:
        """Run ``reading`` (the stream read) to its end, or cancel it once stalled: returns why, else None."""
        task = asyncio.ensure_future(reading)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._config.check_s)
                if done:
                    task.result()  # its own errors (NodeCallError, TimeoutError) go to the caller
                    return None
                why = stall_reason(progress, self._usual_ms, self._others(), self._config, time.perf_counter())
                if why is not None:
                    return why
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
