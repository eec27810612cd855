"""Probation: a new node answers canaries before it gets any work.

A node admitted with fewer than ``probation_canaries`` right answers to its name is put in the
"probation" state: health-checked like any node but never routed to. It is sent canaries at once and
then every ``probation_interval_s`` (coordinator/canary.py: a question whose answer is known exactly,
rewarded like any verified answer), and goes up once it has that many right answers. A node that
answers wrong, or not at all (a Join flood of fake nodes), stays on probation and takes no query.
"""

from __future__ import annotations

import asyncio
import logging

from dellm.coordinator.canary import CanaryProbe
from dellm.coordinator.config import AdmissionConfig
from dellm.coordinator.errors import UnknownNodeError
from dellm.coordinator.periodic import Periodic
from dellm.coordinator.registry.base import NodeRegistry
from dellm.coordinator.types import NodeRecord, Verdict
from dellm.protos.wire import NodeState

log = logging.getLogger(__name__)


class Probation:
    def __init__(self, config: AdmissionConfig, registry: NodeRegistry, canaries: CanaryProbe) -> None:
        self._config = config
        self._registry = registry
        self._canaries = canaries
        self._examining: dict[str, asyncio.Task[None]] = {}
        self._periodic = Periodic("probation", self._examine_all, lambda: config.probation_interval_s,
                                  pause_first=True)

    @property
    def active(self) -> bool:
        return self._config.probation_canaries > 0

    def needs(self, record: NodeRecord) -> bool:
        """Whether ``record`` (just admitted) is still to be judged."""
        return self.active and record.correct < self._config.probation_canaries

    def start(self) -> None:
        if self.active:
            self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        tasks = list(self._examining.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def admit(self, node_id: str) -> None:
        """Put ``node_id`` (just upserted as up) on probation and start its canaries now."""
        self._registry.set_state(node_id, NodeState.PROBATION)
        log.info("node %s is on probation until it answers %d canaries right", node_id,
                 self._config.probation_canaries)
        self._examine(node_id)

    async def _examine_all(self) -> None:
        for record in self._registry.list_nodes():
            if record.state == NodeState.PROBATION:
                self._examine(record.node_id)
        await asyncio.gather(*self._examining.values(), return_exceptions=True)

    def _examine(self, node_id: str) -> None:
        if node_id not in self._examining:
            task = asyncio.get_running_loop().create_task(self._canaries_for(node_id))
            self._examining[node_id] = task
            task.add_done_callback(lambda _: self._examining.pop(node_id, None))

    async def _canaries_for(self, node_id: str) -> None:
        """Canaries one after another until one is answered wrong or the node has enough right answers."""
        while True:
            try:
                record = self._registry.get(node_id)
            except UnknownNodeError:
                return
            if record.state != NodeState.PROBATION:
                return
            if record.correct >= self._config.probation_canaries:
                self._registry.set_state(node_id, NodeState.UP)
                log.info("node %s passed probation (%d right answers): up", node_id, record.correct)
                return
            result = await self._canaries.probe(record)
            if result.verdict is not Verdict.CORRECT:
                return  # the next round tries again
