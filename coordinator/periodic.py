"""A round of work repeated with a pause between rounds, for the coordinator's background duties
(health checks, canaries, static discovery)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``round_`` again and again until stopped, pausing ``pause()`` seconds between rounds
    (before the first one too when ``pause_first``). A round that raises is logged and the next one
    runs as usual: one bad round never ends the duty."""

    def __init__(self, name: str, round_: Callable[[], Awaitable[None]], pause: Callable[[], float], *,
                 pause_first: bool = False) -> None:
        self._name = name
        self._round = round_
        self._pause = pause
        self._pause_first = pause_first
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        if self._pause_first:
            await asyncio.sleep(self._pause())
        while True:
            try:
                await self._round()
            except Exception:
                log.exception("%s round failed", self._name)
            await asyncio.sleep(self._pause())
