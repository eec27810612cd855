"""Who may join, and how fast: Join rate limits per peer address, a bound on the nodes held.

A Join costs the coordinator an Info probe, a registry row and a health check a second from then on;
a process that joined 1000 ids in 3 s cost 1000 health checks a second and took every query. So:

- each peer address (host, without the port) may make ``joins_per_s`` Join calls a second on average
  (bursts of ``join_burst``): heartbeats of a few nodes on one host pass, a loop does not;
- each peer address may register ``new_ids_burst`` node ids at once, then ``new_ids_per_min`` a minute;
  known ids rejoining do not count;
- the registry holds at most ``max_nodes`` ids that are not gone; a new one past it is refused.

Each refusal is JoinLimitedError (RESOURCE_EXHAUSTED): a node's join loop backs off and retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dellm.coordinator.config import AdmissionConfig
from dellm.coordinator.errors import JoinLimitedError


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens, refilled at ``rate`` a second; idle full buckets are forgotten."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst, self._rate, self._clock = burst, rate, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 4096:  # many peers: drop the ones whose buckets have refilled
            self._buckets = {k: (t, a) for k, (t, a) in self._buckets.items()
                             if t + (now - a) * self._rate < self._burst}
        return True


class JoinLimiter:
    def __init__(self, config: AdmissionConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._joins = TokenBuckets(config.join_burst, config.joins_per_s, clock)
        self._new_ids = TokenBuckets(config.new_ids_burst, config.new_ids_per_min / 60.0, clock)

    def join(self, peer: str) -> None:
        """Count one Join call from ``peer``; JoinLimitedError past the rate."""
        if peer and not self._joins.take(peer):
            raise JoinLimitedError(f"too many Joins from {peer}: at most {self._config.joins_per_s:g} a second "
                                   f"(bursts of {self._config.join_burst}); retry later")

    def new_id(self, peer: str, held: int) -> None:
        """Count one new node id from ``peer`` when the registry holds ``held`` ids; JoinLimitedError past
        the rate or the bound."""
        if held >= self._config.max_nodes:
            raise JoinLimitedError(f"this coordinator holds {held} nodes, its limit ({self._config.max_nodes}); "
                                   "no new node can join until some are gone")
        if peer and not self._new_ids.take(peer):
            raise JoinLimitedError(f"too many new node ids from {peer}: at most {self._config.new_ids_burst} at "
                                   f"once, then {self._config.new_ids_per_min:g} a minute; retry later")
