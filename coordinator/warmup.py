"""Warming a node's prompt cache when it is admitted, before it gets any work.

A llama.cpp node keeps the evaluated system prompts of its recent requests (node/backends/llama_cpp.py,
``SystemPrefixStates``), so a request whose system prompt it has seen evaluates only the user's words. A
node just started has seen none: its first request of each kind evaluates the system prompt too. On this
project's 2-core machine the 1.5B coder (one thread) evaluates about 35 prompt tokens a second, so the
first answer of a fresh node is about a second slower than the next, and the first query on a fresh network
(`make demo`) waits for exactly those answers.

So the coordinator, admitting a node that was not up, asks it for one token under each system prompt its
chunks will use, within ``AdmissionConfig.warm_budget_s`` in all, before the node is registered: no query
waits behind the warm-up, and the node's first answers are as fast as its later ones. Warming is an
optimisation only: a node that fails or is slow at it is admitted all the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from dellm.coordinator.config import DispatchConfig
from dellm.coordinator.errors import NodeCallError
from dellm.coordinator.node_client import NodeClient
from dellm.coordinator.pipeline.operations import Operation
from dellm.coordinator.pipeline.prompts import REASONING_SYSTEM, operation_system_prompt
from dellm.coordinator.types import ChunkRequest

log = logging.getLogger(__name__)

WARM_UP_QUERY = "warm-up"  # the query id of warm-up requests, as a node's logs show them
_PROBE = "Reply with OK."


def warm_system_prompts(config: DispatchConfig) -> tuple[str, ...]:
    """The system prompts a node's chunks are sent with, most used first: facts (general questions and
    searches), one line of code (arithmetic the coordinator checks), programs (other math), worked steps (word
    problems), then comparisons and writing."""
    general, search, compare, generate = (operation_system_prompt(op, config) for op in (
        Operation.GENERAL_OP, Operation.SEARCH_OP, Operation.COMPARE_OP, Operation.GENERATE_OP))
    return tuple(dict.fromkeys((general, search, config.expression_system_prompt, config.program_system_prompt,
                                REASONING_SYSTEM, compare, generate)))


async def warm_node(client: NodeClient, system_prompts: Sequence[str], budget_s: float) -> int:
    """Ask ``client``'s node for one token under each of ``system_prompts`` in turn, within ``budget_s`` in
    all; how many it answered. Errors and a spent budget end the warm-up early, and are only logged.

    A prompt that would not be evaluated within what is left of the budget, at the pace this node has shown
    on the prompts before it (seconds per character, the first request's start-up included, so the guess
    errs long), is skipped rather than started: a node cannot stop evaluating a prompt half way, so a
    request given up on at the deadline would keep it busy after admission, and the first query would wait
    for it (the demo's 1.5B was still evaluating the one-line-code prompt's examples when it was asked)."""
    deadline = time.monotonic() + budget_s
    warmed = 0
    spent_s, chars = 0.0, 0  # this node's pace so far
    for index, system in enumerate(system_prompts):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        size = len(system) + len(_PROBE)
        if chars and spent_s / chars * size > left:
            log.info("warming node %s: system prompt %d of %d skipped, about %.1f s at its pace with %.1f s left",
                     client.node_id, index + 1, len(system_prompts), spent_s / chars * size, left)
            continue
        request = ChunkRequest(WARM_UP_QUERY, f"w{index + 1}", Operation.GENERAL_OP, _PROBE, 1, 0.0, system)
        started = time.monotonic()
        try:
            async for _ in client.generate(request, left):  # the call's deadline is what is left of the budget
                pass
        except NodeCallError as exc:  # DEADLINE_EXCEEDED past the budget, or the node failed
            log.info("warming node %s stopped after %d of %d system prompts: %s", client.node_id, warmed,
                     len(system_prompts), exc)
            break
        spent_s += time.monotonic() - started
        chars += size
        warmed += 1
    return warmed
