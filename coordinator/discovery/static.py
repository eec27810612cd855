"""A fixed list of node addresses, tried until each answers (for networks without multicast)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dellm.coordinator.discovery.base import DiscoverySink
from dellm.coordinator.periodic import Periodic


class StaticDiscovery:
    """Offers every address to the coordinator every ``interval`` seconds.

    Admission is idempotent, and the health monitor takes over once a node is in the
    registry, so re-offering is cheap and brings back a node that started late.
    """

    def __init__(self, addresses: Sequence[str], interval: float = 5.0) -> None:
        self._addresses = tuple(addresses)
        self._interval = interval
        self._periodic: Periodic | None = None

    async def start(self, sink: DiscoverySink) -> None:
        async def offer_all() -> None:
            await asyncio.gather(*(sink.found(address, None, source="static") for address in self._addresses))

        self._periodic = Periodic("static discovery", offer_all, lambda: self._interval)
        self._periodic.start()

    async def stop(self) -> None:
        if self._periodic is not None:
            await self._periodic.stop()
