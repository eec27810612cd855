"""The background-duty helper: rounds repeat, a failing round does not end the duty, stop stops it."""

from __future__ import annotations

import asyncio

from dellm.coordinator.periodic import Periodic


async def test_rounds_repeat_survive_errors_and_stop() -> None:
    rounds: list[int] = []

    async def round_() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 2:
            raise RuntimeError("a bad round")

    duty = Periodic("test duty", round_, lambda: 0.01)
    duty.start()
    await asyncio.sleep(0.1)
    await duty.stop()
    count = len(rounds)
    assert count >= 4  # the failure in round 2 did not end it
    await asyncio.sleep(0.05)
    assert len(rounds) == count  # stopped means stopped


async def test_pause_first_waits_before_the_first_round() -> None:
    rounds: list[float] = []

    async def round_() -> None:
        rounds.append(asyncio.get_running_loop().time())

    duty = Periodic("late duty", round_, lambda: 0.2, pause_first=True)
    duty.start()
    await asyncio.sleep(0.1)
    assert rounds == []
    await duty.stop()
