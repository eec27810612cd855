"""Health checks: nodes that stop answering stop getting work, and come back when they answer.

Every ``interval`` the monitor asks each known node's ``grpc.health.v1`` service (with a
deadline). ``max_missed`` misses in a row mark an up node down; a down node that answers
is up again; a node down for longer than ``ttl`` is ``gone``: no longer checked or routed,
but its fitness stays stored under its id for when it rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dellm.coordinator.config import HealthConfig
from dellm.coordinator.node_client import NodePool
from dellm.coordinator.periodic import Periodic
from dellm.coordinator.registry.base import NodeRegistry
from dellm.coordinator.types import NodeRecord
from dellm.protos.wire import NodeState

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, registry: NodeRegistry, pool: NodePool, config: HealthConfig,
                 retention_s: float = float("inf")) -> None:
        self._registry = registry
        self._retention_s = retention_s  # a node gone this long is pruned (its figures archived)
        self._pool = pool
        self._config = config
        self._missed: dict[str, int] = {}
        self._written: dict[str, float] = {}
        self._periodic = Periodic("health checks", self.check_all, lambda: config.interval_s)

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def check_all(self) -> None:
        listed = self._registry.list_nodes()
        nodes = [n for n in listed if n.state in (NodeState.UP, NodeState.DOWN, NodeState.PROBATION)]
        results = await asyncio.gather(*(self._check(n) for n in nodes))
        now = time.time()
        for node in listed:
            if node.state == NodeState.GONE and now - node.last_seen > self._retention_s:
                log.info("node %s gone for over %.0fs: pruned from the registry (fitness %.3f archived)",
                         node.node_id, self._retention_s, node.fitness)
                self._registry.prune(node.node_id)
        for node, healthy in zip(nodes, results, strict=True):
            self._apply(node, healthy, now)

    async def _check(self, node: NodeRecord) -> bool:
        return await self._pool.client(node.node_id, node.info.address).healthy(self._config.timeout_s)

    def _apply(self, node: NodeRecord, healthy: bool, now: float) -> None:
        node_id = node.node_id
        if healthy:
            self._missed[node_id] = 0
            state = NodeState.PROBATION if node.state == NodeState.PROBATION else NodeState.UP  # canaries decide
            if node.state != state or now - self._written.get(node_id, 0.0) >= self._config.last_seen_write_s:
                if node.state != state:
                    log.info("node %s at %s answers again: up", node_id, node.info.address)
                self._registry.set_state(node_id, state, now=now)
                self._written[node_id] = now
            return
        missed = self._missed[node_id] = self._missed.get(node_id, 0) + 1
        if node.state == NodeState.UP and missed >= self._config.max_missed:
            log.warning("node %s at %s missed %d health checks: down", node_id, node.info.address, missed)
            self._registry.set_state(node_id, NodeState.DOWN)
        elif node.state in (NodeState.DOWN, NodeState.PROBATION) and now - node.last_seen > self._config.ttl_s:
            log.info("node %s down for over %.0fs: dropped from the live set (fitness kept)", node_id,
                     self._config.ttl_s)
            self._registry.set_state(node_id, NodeState.GONE)
            self._missed.pop(node_id, None)
