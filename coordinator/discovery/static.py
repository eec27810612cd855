"""A fixed list of node addresses, tried until each answers (for networks without multicast)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from coordinator.discovery.base import DiscoverySink


class StaticDiscovery:
    """Offers every address to the coordinator every ``interval`` seconds.

    Admission is idempotent, and the health monitor takes over once a node is in the
    registry, so re-offering is cheap and brings back a node that started late.
    """

    def __init__(self, addresses: Sequence[str], interval: float = 5.0) -> None:
        self._addresses = tuple(addresses)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self, sink: DiscoverySink) -> None:
        async def offer_forever() -> None:
            while True:
                await asyncio.gather(*(sink.found(address, None, source="static") for address in self._addresses))
                await asyncio.sleep(self._interval)

        self._task = asyncio.get_running_loop().create_task(offer_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
